"""The CNI protocol as plain data: requests parsed from a runtime's environment and stdin
(``protocol``), results and their conversion between spec versions (``results``), error codes
(``codes``). No I/O here. ``shim`` is the executable a runtime runs: it is standard library
only and imports nothing from kuryr, because install-cni copies it alone into a CNI bin dir.
"""
