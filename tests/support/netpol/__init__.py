"""NetworkPolicy truth tables in the data plane, after the upstream Kubernetes e2e ``netpol``
suite: a reference evaluator of the policy semantics (``model``), real probes between pods in
network namespaces (``prober``, ``agent``), the matrices they fill (``matrix``) and the
upstream x/y/z x a/b/c layout (``layout``)."""
