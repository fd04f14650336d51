"""The Kubernetes resources kuryr reads and writes, and their URL paths.

Owns addressing (group, version, plural, scope) and the kuryr CRD names (group
``openstack.org/v1``, the same as upstream kuryr-kubernetes). No I/O.
"""

from __future__ import annotations

import dataclasses

GROUP = "openstack.org"
VERSION = "v1"
# The label on a KuryrPort naming its pod's node: a node daemon watches only its own.
NODE_LABEL = "kuryr.openstack.org/nodeName"


@dataclasses.dataclass(frozen=True)
class Resource:
    """One API resource: ``group`` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    is_namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The collection (``name`` None) or object URL path; ``namespace`` None on a
        namespaced resource means every namespace."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.is_namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


PODS = Resource("", "v1", "pods", "Pod")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", is_namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", is_namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
KURYR_PORTS = Resource(GROUP, VERSION, "kuryrports", "KuryrPort")
KURYR_NETWORKS = Resource(GROUP, VERSION, "kuryrnetworks", "KuryrNetwork")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
KURYR_LOAD_BALANCERS = Resource(GROUP, VERSION, "kuryrloadbalancers", "KuryrLoadBalancer")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
KURYR_NETWORK_POLICIES = Resource(GROUP, VERSION, "kuryrnetworkpolicies", "KuryrNetworkPolicy")
# One per Node (named after it): the node's ready pool ports, which its daemon plugs ahead.
KURYR_NODE_POOLS = Resource(GROUP, VERSION, "kuryrnodepools", "KuryrNodePool",
                            is_namespaced=False)
# The label that ties an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
