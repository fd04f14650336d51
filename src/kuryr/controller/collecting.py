"""Garbage collection: Neutron resources tagged for this cluster whose Kubernetes owner is gone.

Owns finding orphans and (``apply``) removing them: ports whose ``kuryr-pod-uid`` names no
live pod, networks (with their router interfaces and subnets) whose ``kuryr-namespace-uid``
names no live namespace. Only resources carrying both ``kuryr`` and this cluster's tag are
looked at; nothing untagged is ever touched. Neutron is listed before Kubernetes, so an owner
created after the listing cannot have its new resource taken for an orphan.
"""

from __future__ import annotations

import dataclasses
import logging

from kuryr import errors
from kuryr.controller import networks
from kuryr.k8s import api, resources
from kuryr.neutron import client, tagging
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A Neutron resource whose owner no longer exists."""

    kind: str  # "port" or "network"
    resource_id: str
    name: str
    owner: str  # the owner tag


async def find_orphans(kube: api.Kube, neutron: client.Neutron) -> list[Orphan]:
    """Orphaned ports and networks of this cluster. Raises TemporaryError, PermanentError."""
    base = list(neutron.base_tags)
    ports = await neutron.list_ports(tags=base, device_owner=lifecycle.DEVICE_OWNER)
    nets = await neutron.list_networks(tags=base)
    pods, _ = await kube.list(resources.PODS)
    namespaces, _ = await kube.list(resources.NAMESPACES)
    pod_uids = {p["metadata"]["uid"] for p in pods}
    namespace_uids = {n["metadata"]["uid"] for n in namespaces}
    found: list[Orphan] = []
    for port in ports:
        owner = tagging.value_of(port.tags, "pod-uid")
        if owner is not None and owner not in pod_uids:
            found.append(Orphan("port", port.id, port.name, f"pod {owner}"))
    for net in nets:
        owner = tagging.value_of(net.tags, "namespace-uid")
        if owner is not None and owner not in namespace_uids:
            found.append(Orphan("network", net.id, net.name, f"namespace {owner}"))
    return found


async def remove(neutron: client.Neutron, orphans: list[Orphan]) -> list[str]:
    """Remove orphans, ports first; returns what could not be removed (and why)."""
    failed: list[str] = []
    for orphan in sorted(orphans, key=lambda o: o.kind != "port"):
        try:
            if orphan.kind == "port":
                await neutron.delete_port(orphan.resource_id)
            else:
                await networks.release_network(neutron, orphan.resource_id)
            LOG.info("gc: removed %s %s (%s)", orphan.kind, orphan.resource_id, orphan.owner)
        except errors.KuryrError as e:
            failed.append(f"{orphan.kind} {orphan.resource_id}: {e}")
    return failed
