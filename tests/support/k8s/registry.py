"""The resource registry of the Kubernetes API double: which resources exist, how they are
addressed, and the discovery documents (``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``,
``/apis/<group>/<version>``) built from them.

It owns the description of resources (group, version, plural, kind, scope, status subresource,
field-selector labels); it does not own objects (``store``) nor HTTP (``server``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
from typing import Any

# Field labels every resource accepts in a fieldSelector (the real server's default set).
COMMON_FIELDS = ("metadata.name", "metadata.namespace")


@dataclasses.dataclass(frozen=True)
class Resource:
    """One API resource: ``group`` is "" for the core group."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = True
    is_custom: bool = False
    short_names: tuple[str, ...] = ()
    extra_fields: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """The name used in Status messages: ``pods`` or ``leases.coordination.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def field_labels(self) -> tuple[str, ...]:
        return COMMON_FIELDS + self.extra_fields


def crd(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
        has_status: bool = True) -> Resource:
    """A custom resource, as a CustomResourceDefinition would declare it."""
    return Resource(group, version, plural, kind, namespaced=namespaced, has_status=has_status,
                    is_custom=True)


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
                      extra_fields=("status.phase",))
NODES = Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",),
                 extra_fields=("spec.unschedulable",))
PODS = Resource("", "v1", "pods", "Pod", short_names=("po",),
                extra_fields=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                              "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                              "status.podIP", "status.nominatedNodeName"))
EVENTS = Resource("", "v1", "events", "Event", has_status=False, short_names=("ev",),
                  extra_fields=("involvedObject.kind", "involvedObject.namespace",
                                "involvedObject.name", "involvedObject.uid",
                                "involvedObject.apiVersion", "involvedObject.resourceVersion",
                                "involvedObject.fieldPath", "reason", "reportingComponent",
                                "source", "type"))
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", has_status=False,
                      short_names=("cm",))
SERVICES = Resource("", "v1", "services", "Service", short_names=("svc",))
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", has_status=False, short_names=("ep",))
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", has_status=False)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice",
                           has_status=False)
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy",
                            has_status=False, short_names=("netpol",))

CORE_RESOURCES = (NAMESPACES, NODES, PODS, EVENTS, CONFIGMAPS, SERVICES, ENDPOINTS, LEASES,
                  ENDPOINT_SLICES, NETWORK_POLICIES)

KURYR_PORTS = crd("openstack.org", "v1", "kuryrports", "KuryrPort")
KURYR_NETWORKS = crd("openstack.org", "v1", "kuryrnetworks", "KuryrNetwork")
KURYR_NETWORK_POLICIES = crd("openstack.org", "v1", "kuryrnetworkpolicies",
                             "KuryrNetworkPolicy")
KURYR_LOAD_BALANCERS = crd("openstack.org", "v1", "kuryrloadbalancers", "KuryrLoadBalancer")
KURYR_NODE_POOLS = crd("openstack.org", "v1", "kuryrnodepools", "KuryrNodePool",
                       namespaced=False)

KURYR_RESOURCES = (KURYR_PORTS, KURYR_NETWORKS, KURYR_NETWORK_POLICIES, KURYR_LOAD_BALANCERS,
                   KURYR_NODE_POOLS)

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class Registry:
    """The resources served, looked up by (group, version, plural); registrable at run time."""

    def __init__(self, resources: tuple[Resource, ...] | list[Resource] = ()) -> None:
        self._resources: dict[tuple[str, str, str], Resource] = {}
        for resource in resources:
            self.register(resource)

    def register(self, resource: Resource) -> None:
        """Serve ``resource`` from now on (like applying a CRD); re-registering replaces it."""
        self._resources[(resource.group, resource.version, resource.plural)] = resource

    def lookup(self, group: str, version: str, plural: str) -> Resource | None:
        return self._resources.get((group, version, plural))

    def __iter__(self) -> collections.abc.Iterator[Resource]:
        return iter(list(self._resources.values()))

    def groups(self) -> dict[str, list[str]]:
        """Named groups (not the core group) and their versions, in registration order."""
        found: dict[str, list[str]] = {}
        for resource in self:
            if resource.group and resource.version not in found.setdefault(resource.group, []):
                found[resource.group].append(resource.version)
        return found

    def has_version(self, group: str, version: str) -> bool:
        return any(r.group == group and r.version == version for r in self)

    # -- discovery documents ------------------------------------------------------------------

    def api_versions(self) -> dict[str, Any]:
        """``GET /api``."""
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": "127.0.0.1"}]}

    def api_group(self, group: str) -> dict[str, Any] | None:
        """``GET /apis/<group>``, or None when no resource of that group is registered."""
        versions = self.groups().get(group)
        if not versions:
            return None
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    def api_group_list(self) -> dict[str, Any]:
        """``GET /apis``."""
        groups = [self.api_group(group) for group in self.groups()]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        """``GET /api/v1`` or ``GET /apis/<group>/<version>``; None when nothing is served."""
        if not self.has_version(group, version):
            return None
        entries: list[dict[str, Any]] = []
        for r in self:
            if r.group != group or r.version != version:
                continue
            entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular,
                                     "namespaced": r.namespaced, "kind": r.kind,
                                     "verbs": list(_VERBS)}
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            entries.append(entry)
            if r.has_status:
                entries.append({"name": f"{r.plural}/status", "singularName": "",
                                "namespaced": r.namespaced, "kind": r.kind,
                                "verbs": ["get", "patch", "update"]})
        group_version = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": entries}
