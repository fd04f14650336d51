"""``kuryr controller``: Kubernetes objects to Neutron resources. ``reacting`` is the small
reactor (per-object serial work, parallel across objects, backoff), ``networks`` handles
Namespaces and KuryrNetworks, ``ports`` Pods and KuryrPorts, ``placing`` says where a pod's
port goes (the subnet drivers), ``pooling`` keeps the per-node port pools, ``collecting`` the
garbage collection, ``running`` wires it all together."""
