"""Everything that touches the kernel or Open vSwitch: network namespaces (``namespaces``),
links, addresses and routes (``interfaces``, pyroute2) and OVS ports (``ovs``, ovsdbapp).
The only importer of pyroute2 and ovsdbapp.

Calls here are blocking and short; async callers run them with ``asyncio.to_thread``. Work
inside a namespace goes through pyroute2 sockets opened in that namespace (``netns=``): no
thread of a long-lived process ever calls ``setns``.
"""
