"""kuryr: Neutron networking for containers.

The package is layered (see docs/architecture.md); imports point downward only:
``cli`` -> entry points (``cloud``, ``demo``, later ``daemon``, ``libnetwork``, ``controller``)
-> ``ports`` -> adapters (``binding``, ``neutron``) -> ``linux`` -> ``model``, ``errors``,
``settings``.
"""

__version__ = "0.1.0"
