"""``kuryr controller``: Kubernetes objects to Neutron resources. ``reacting`` is the small
reactor (per-object serial work, parallel across objects, backoff), ``networks`` handles
Namespaces and KuryrNetworks, ``ports`` Pods and KuryrPorts, ``collecting`` the garbage
collection, ``running`` wires it all together."""
