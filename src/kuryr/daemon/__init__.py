"""The node daemon (``kuryr daemon``): serves CNI requests from the ``kuryr`` executable on a
root-only unix socket (``server``), runs them in standalone mode (``standalone``: the daemon
creates and deletes Neutron ports itself, for podman and containerd), one container at a time
and different containers in parallel (``locking``).
"""
