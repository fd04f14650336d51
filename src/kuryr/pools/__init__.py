"""Warm port pools (``warm``): Neutron ports bound to this host, plugged and ACTIVE before any
container asks, so that taking one costs a few netlink calls and no Neutron call. Shared by the
node daemon's standalone mode and, later, the Kubernetes controller.
"""
