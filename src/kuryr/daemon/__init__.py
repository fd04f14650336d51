"""The node daemon (``kuryr daemon``): serves CNI requests from the ``kuryr`` executable on a
root-only unix socket (``server``, with metrics in ``observing``), runs them in standalone mode
(``standalone``: the daemon creates and deletes Neutron ports itself, for podman and
containerd) or in Kubernetes mode (``kubernetes``: it plugs the VIF of each pod's KuryrPort and
never calls Neutron), one container at a time and different containers in parallel
(``locking``). ``sandboxes`` holds what both modes share about a plugged interface.
"""
