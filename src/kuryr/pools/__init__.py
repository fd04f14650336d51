"""Port pools: Neutron ports made before any container asks, so that taking one costs no
Neutron call. ``warm``: a node daemon's (standalone mode) ports bound to its host, plugged and
ACTIVE; taking one costs a few netlink calls. ``nodes``: the Kubernetes controller's ports per
node, bound to the node but not plugged (its daemon plugs them); taking one costs nothing.
"""
