"""kuryr's Neutron ports as an operator sees them: each ``compute:kuryr`` port with its owner
(a pod, a CNI container and ifname, a Docker endpoint, a pool), host, status, addresses and
age, and whether that owner is gone (an orphan).

Owns reading the owner back from what each mode writes on a port (tags, name, device_id); it
does not own those names (``kuryr.daemon.standalone``, ``kuryr.libnetwork.mapping``,
``kuryr.controller``, ``kuryr.pools``) and never changes a port: ``kuryr gc`` and the daemons
remove orphans.

An orphan is decided only where that is reliable:
- a CNI container's or Docker endpoint's port bound to *this* host with no OVS Interface
  (``external_ids:iface-id``) here: its release was cut short (the daemon and the Docker
  driver release such ports themselves at start-up);
- a pod's port (``device_id`` = pod UID) whose pod the Kubernetes API does not list, when
  the API is configured;
- a pool port is never an orphan here (its pool owns it), nor is a port of another host for
  CNI and Docker (its OVS is not this host's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Collection

from kuryr import errors
from kuryr.k8s import api
from kuryr.k8s import resources as k8s_resources
from kuryr.linux import ovs
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

# The owner tags each mode writes (kuryr.daemon.standalone, kuryr.libnetwork.mapping,
# kuryr.controller.context, kuryr.pools.warm / nodes), as tagging.owner kinds.
CNI_CONTAINER = "cni-container"
CNI_IFNAME = "cni-ifname"
CNI_NETWORK = "cni-network"
DOCKER_ENDPOINT = "docker-endpoint"
POD_UID = "pod-uid"
POOL = "pool"
POOL_HOST = "pool-host"
POOL_NODE = "pool-node"
POOL_NAME_PREFIX = "kuryr-pool"  # how kuryr.pools.warm and kuryr.pools.nodes name ports

KIND_POD = "pod"
KIND_CNI = "cni"
KIND_DOCKER = "docker"
KIND_POOL = "pool"
KIND_UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who a port is for: ``kind`` (pod, cni, docker, pool, unknown) and a readable
    ``label`` (``ns/name``, ``<container>/<ifname>``, ``endpoint <id>``, ``pool <host>``);
    ``namespace`` only for a pod."""

    kind: str
    label: str
    namespace: str = ""
    key: str = ""  # what decides whether the owner lives: pod UID, container ID, endpoint ID


@dataclasses.dataclass(frozen=True)
class PortView:
    """One kuryr port as ``kuryr ports`` shows it."""

    id: str
    name: str
    owner: Owner
    host: str
    status: str
    addresses: tuple[str, ...]
    network_id: str
    mac: str
    created_at: str
    age_seconds: float | None
    is_orphan: bool | None  # None: cannot be decided here
    orphan_reason: str = ""

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "owner_kind": self.owner.kind,
                "owner": self.owner.label, "namespace": self.owner.namespace or None,
                "host": self.host, "status": self.status, "addresses": list(self.addresses),
                "network_id": self.network_id, "mac": self.mac,
                "created_at": self.created_at or None, "age_seconds": self.age_seconds,
                "orphan": self.is_orphan, "orphan_reason": self.orphan_reason or None}


def owner_of(port: resources.Port) -> Owner:
    """The owner kuryr wrote on ``port``."""
    tags = port.tags
    pool_host = tagging.value_of(tags, POOL_HOST)
    pool_node = tagging.value_of(tags, POOL_NODE)
    if pool_host is not None or pool_node is not None or tagging.value_of(tags, POOL) is not None:
        return Owner(KIND_POOL, f"pool {pool_host or pool_node or port.host_id}")
    if port.name.startswith(POOL_NAME_PREFIX):
        # A pool batch not tagged yet (create and tag are two calls): its pool finds it by
        # this name ("kuryr-pool-<host>[:<name>]", "kuryr-pool:<cluster>") and tags it.
        return Owner(KIND_POOL, f"pool {port.host_id or '?'} (untagged batch)")
    pod_uid = tagging.value_of(tags, POD_UID)
    if pod_uid is not None:
        # The controller names a pod's port "<namespace>/<name>", device_id the pod's UID.
        namespace, _, name = port.name.partition("/")
        return Owner(KIND_POD, port.name or pod_uid, namespace=namespace if name else "",
                     key=pod_uid)
    container = tagging.value_of(tags, CNI_CONTAINER)
    if container is not None:
        ifname = tagging.value_of(tags, CNI_IFNAME) or "?"
        return Owner(KIND_CNI, f"{container[:12]}/{ifname}", key=container)
    endpoint = tagging.value_of(tags, DOCKER_ENDPOINT)
    if endpoint is not None:
        return Owner(KIND_DOCKER, f"endpoint {endpoint[:12]}", key=endpoint)
    return Owner(KIND_UNKNOWN, port.name or "(untagged)")


def age_of(created_at: str, *, now: datetime.datetime) -> float | None:
    """Seconds since ``created_at`` (Neutron's ISO 8601, UTC), or None if unreadable."""
    if not created_at:
        return None
    try:
        created = datetime.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.UTC)
    return max(0.0, (now - created).total_seconds())


def view(port: resources.Port, *, host: str, iface_ids: Collection[str] | None,
         pod_uids: Collection[str] | None, now: datetime.datetime) -> PortView:
    """``port`` as shown, with its orphan verdict. ``iface_ids``: this host's OVS Interfaces'
    iface-ids (None: OVS not readable); ``pod_uids``: the pods the API lists (None: no API)."""
    owner = owner_of(port)
    is_orphan: bool | None = None
    reason = ""
    if owner.kind in (KIND_CNI, KIND_DOCKER) and port.host_id == host:
        if iface_ids is not None:
            is_orphan = port.id not in iface_ids
            if is_orphan:
                reason = f"no OVS interface for it on {host}"
    elif owner.kind == KIND_POD and pod_uids is not None:
        is_orphan = owner.key not in pod_uids
        if is_orphan:
            reason = f"pod {owner.key} is not in the Kubernetes API"
    elif owner.kind == KIND_POOL:
        is_orphan = False
    return PortView(
        id=port.id, name=port.name, owner=owner, host=port.host_id, status=port.status,
        addresses=tuple(f.ip_address for f in port.fixed_ips), network_id=port.network_id,
        mac=port.mac, created_at=port.created_at,
        age_seconds=age_of(port.created_at, now=now), is_orphan=is_orphan,
        orphan_reason=reason)


def select(views: list[PortView], *, node: str | None = None, namespace: str | None = None,
           is_orphans: bool = False) -> list[PortView]:
    """The views on ``node`` (binding host), of pods in ``namespace``, orphans only."""
    return [v for v in views
            if (node is None or v.host == node)
            and (namespace is None or v.owner.namespace == namespace)
            and (not is_orphans or v.is_orphan is True)]


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


async def gather(neutron: client.Neutron, *, host: str, ovsdb: ovs.Ovsdb | None,
                 kube: api.Kube | None) -> tuple[list[PortView], list[str]]:
    """Every ``compute:kuryr`` port as a view, and notes on what could not be read (OVS,
    the Kubernetes API), which leaves those orphan verdicts undecided. Raises
    TemporaryError, PermanentError (Neutron)."""
    notes: list[str] = []
    ports = await neutron.list_ports(device_owner=lifecycle.DEVICE_OWNER)
    iface_ids: set[str] | None = None
    if ovsdb is not None:
        try:
            iface_ids = await asyncio.to_thread(ovsdb.iface_ids)
        except errors.KuryrError as e:
            notes.append(f"OVS not readable, CNI and Docker orphans undecided: {e}")
    pod_uids: frozenset[str] | None = None
    if kube is not None:
        try:
            pods, _ = await kube.list(k8s_resources.PODS)
        except errors.KuryrError as e:
            notes.append(f"Kubernetes API not readable, pod orphans undecided: {e}")
        else:
            pod_uids = frozenset(p["metadata"]["uid"] for p in pods)
    now = datetime.datetime.now(datetime.UTC)
    views = [view(p, host=host, iface_ids=iface_ids, pod_uids=pod_uids, now=now)
             for p in sorted(ports, key=lambda p: (p.host_id, p.name, p.id))]
    return views, notes
