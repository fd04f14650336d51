"""``kuryr libnetwork``: Docker's remote NetworkDriver and IpamDriver on Neutron.

Entry point layer: ``server`` wires and serves the drivers (``network_driver``,
``ipam_driver``, ``exposing``) that speak Docker's ``wire`` and find everything again in Neutron
through ``mapping``'s tags.
"""
