"""Operators' tools: what ``kuryr ports``, ``kuryr status`` and ``kuryr doctor`` read and
decide, apart from how the CLI prints it. Reads Neutron, OVS, the Kubernetes API and kuryr's
own sockets; changes nothing."""
