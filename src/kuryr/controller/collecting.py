"""Garbage collection: Neutron resources tagged for this cluster whose Kubernetes owner is gone.

Owns finding orphans and (``remove``) removing them: ports whose ``kuryr-pod-uid`` names no
live pod; pool ports (``kuryr.pools.nodes``) of a Node that no longer exists, handed to a pod
that no longer exists, or on an orphaned network; networks (with their router interfaces and
subnets) whose ``kuryr-namespace-uid`` names no live namespace; with Octavia, load balancers
(deleted with everything on them) and floating IPs whose ``kuryr-service-uid`` names no live
Service. Only resources carrying both
``kuryr`` and this cluster's tag are looked at; nothing untagged is ever touched. Neutron is
listed before the owners are read, so an owner created after the listing cannot have its new
resource taken for an orphan.

Run on demand by ``kuryr gc`` (owners listed from the API) and, every ``[kubernetes]
gc_interval`` seconds, by the leading controller (``collect_periodically``; owners from its
informers, which have seen every owner before any of its resources was made).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from kuryr import errors
from kuryr.controller import context, networks, policyspec
from kuryr.k8s import api, resources
from kuryr.neutron import client, tagging
from kuryr.octavia import client as octavia_client
from kuryr.pools import nodes
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Orphan:
    """A Neutron resource whose owner no longer exists."""

    kind: str  # "port", "network", "loadbalancer", "floatingip", "securitygroup", ...
    resource_id: str
    name: str
    owner: str  # the owner tag


@dataclasses.dataclass(frozen=True)
class Owners:
    """What may own Neutron resources: live pods (UIDs), namespaces (UIDs), Nodes and
    Services (UIDs)."""

    pod_uids: frozenset[str]
    namespace_uids: frozenset[str]
    nodes: frozenset[str]
    service_uids: frozenset[str] = frozenset()
    # NetworkPolicies (UIDs) and the address groups live KuryrNetworkPolicies name; None
    # where the API serves no NetworkPolicy (their groups are then not looked at).
    policy_uids: frozenset[str] | None = None
    address_groups: frozenset[str] | None = None


async def listed_owners(kube: api.Kube, cluster_id: str) -> Owners:
    """The owners as the API lists them now. Raises TemporaryError, PermanentError."""
    pods, _ = await kube.list(resources.PODS)
    namespaces, _ = await kube.list(resources.NAMESPACES)
    node_list, _ = await kube.list(resources.NODES)
    service_list, _ = await kube.list(resources.SERVICES)
    try:
        policies, _ = await kube.list(resources.NETWORK_POLICIES)
        knps, _ = await kube.list(resources.KURYR_NETWORK_POLICIES)
    except errors.NotFoundError:  # no NetworkPolicy API, or no KuryrNetworkPolicy CRD
        policy_uids = names = None
    else:
        policy_uids = frozenset(p["metadata"]["uid"] for p in policies)
        names = _address_groups(cluster_id, knps)
    return Owners(pod_uids=frozenset(p["metadata"]["uid"] for p in pods),
                  namespace_uids=frozenset(n["metadata"]["uid"] for n in namespaces),
                  nodes=frozenset(n["metadata"]["name"] for n in node_list),
                  service_uids=frozenset(s["metadata"]["uid"] for s in service_list),
                  policy_uids=policy_uids, address_groups=names)


def _address_groups(cluster_id: str, knps: list[api.Object]) -> frozenset[str]:
    """The address groups live KuryrNetworkPolicies refer to, and the nodes' group."""
    names = {policyspec.group_name(cluster_id, policyspec.nodes_peer())}
    for knp in knps:
        if not knp["metadata"].get("deletionTimestamp"):
            names.update(policyspec.peers_of(knp.get("spec") or {}))
    return frozenset(names)


def cached_owners(ctx: context.Context) -> Owners:
    """The owners in the controller's informers."""
    def uids(plural: str) -> frozenset[str]:
        return frozenset(o["metadata"]["uid"] for o in ctx.informers[plural].objects.values())

    with_policy = "networkpolicies" in ctx.informers
    return Owners(pod_uids=uids("pods"), namespace_uids=uids("namespaces"),
                  nodes=frozenset(name for _, name in ctx.informers["nodes"].objects),
                  service_uids=uids("services") if "services" in ctx.informers
                  else frozenset(),
                  policy_uids=uids("networkpolicies") if with_policy else None,
                  address_groups=_address_groups(
                      ctx.config.cluster_id,
                      list(ctx.informers["kuryrnetworkpolicies"].objects.values()))
                  if with_policy else None)


async def find_orphans(neutron: client.Neutron,
                       owners: Callable[[], Awaitable[Owners]], *,
                       octavia: octavia_client.Octavia | None = None) -> list[Orphan]:
    """Orphaned ports, networks, load balancers (with ``octavia``) and floating IPs of this
    cluster; ``owners`` is read after Neutron and Octavia are listed. Raises TemporaryError,
    PermanentError."""
    base = list(neutron.base_tags)
    ports = await neutron.list_ports(tags=base, device_owner=lifecycle.DEVICE_OWNER)
    nets = await neutron.list_networks(tags=base)
    lbs = await octavia.list_load_balancers(tags=base) if octavia is not None else []
    fips = await neutron.list_floating_ips(tags=base) if octavia is not None else []
    groups = await neutron.list_security_groups(tags=base)
    prefix = f"kuryr-{neutron.cluster_id}-ag-"
    address_groups = [g for g in await neutron.list_address_groups()
                      if g.name.startswith(prefix)]
    live = await owners()
    found: list[Orphan] = []
    if live.policy_uids is not None and live.address_groups is not None:
        for group in groups:
            owner = tagging.value_of(group.tags, "policy-uid")
            if owner is not None and owner not in live.policy_uids:
                found.append(Orphan("securitygroup", group.id, group.name,
                                    f"networkpolicy {owner}"))
        for address_group in address_groups:
            if address_group.name not in live.address_groups:
                found.append(Orphan("addressgroup", address_group.id, address_group.name,
                                    "every policy that used it"))
    for lb in lbs:
        owner = tagging.value_of(lb.tags, "service-uid")
        if owner is not None and owner not in live.service_uids:
            found.append(Orphan("loadbalancer", lb.id, lb.name, f"service {owner}"))
    for fip in fips:
        owner = tagging.value_of(fip.tags, "service-uid")
        if owner is not None and owner not in live.service_uids:
            found.append(Orphan("floatingip", fip.id, fip.floating_ip_address,
                                f"service {owner}"))
    orphaned_networks: set[str] = set()
    for net in nets:
        owner = tagging.value_of(net.tags, "namespace-uid")
        if owner is not None and owner not in live.namespace_uids:
            found.append(Orphan("network", net.id, net.name, f"namespace {owner}"))
            orphaned_networks.add(net.id)
    for port in ports:
        owner = tagging.value_of(port.tags, "pod-uid")
        node = nodes.pool_node(port)
        if owner is not None:
            gone = None if owner in live.pod_uids else f"pod {owner}"
        elif node is None:
            gone = None
        elif not nodes.is_unowned(port):  # handed to a pod; its owner tag not written yet
            gone = None if port.device_id in live.pod_uids else f"pod {port.device_id}"
        elif node not in live.nodes:
            gone = f"node {node}"
        else:
            gone = f"network {port.network_id}" if port.network_id in orphaned_networks \
                else None
        if gone is not None:
            found.append(Orphan("port", port.id, port.name, gone))
    return found


_ORDER = ("floatingip", "loadbalancer", "port", "network", "securitygroup", "addressgroup")


async def remove(neutron: client.Neutron, orphans: list[Orphan], *,
                 octavia: octavia_client.Octavia | None = None) -> list[str]:
    """Remove orphans: floating IPs, load balancers (cascade, waited for), ports, networks,
    policies' security groups, then address groups no rule refers to; returns what could not
    be removed (and why)."""
    failed: list[str] = []
    for orphan in sorted(orphans, key=lambda o: _ORDER.index(o.kind)):
        try:
            if orphan.kind == "floatingip":
                await neutron.delete_floating_ip(orphan.resource_id)
            elif orphan.kind == "loadbalancer":
                if octavia is None:
                    continue
                await octavia.delete_load_balancer(orphan.resource_id, cascade=True)
                await octavia.wait_load_balancer_deleted(orphan.resource_id, timeout=60.0)
            elif orphan.kind == "port":
                await neutron.delete_port(orphan.resource_id)
            elif orphan.kind == "securitygroup":
                await neutron.delete_security_group(orphan.resource_id)
            elif orphan.kind == "addressgroup":
                await neutron.delete_address_group(orphan.resource_id)
            else:
                await networks.release_network(neutron, orphan.resource_id)
            LOG.info("gc: removed %s %s (%s)", orphan.kind, orphan.resource_id, orphan.owner)
        except errors.KuryrError as e:
            failed.append(f"{orphan.kind} {orphan.resource_id}: {e}")
    return failed


async def collect_periodically(ctx: context.Context, *, interval: float) -> None:
    """Every ``interval`` seconds (the first time one interval after the start), find and
    remove orphans, counting them in the metrics. Runs until cancelled."""
    async def owners() -> Owners:
        return cached_owners(ctx)

    while True:
        await asyncio.sleep(interval)
        try:
            if ctx.pool is not None:
                await ctx.pool.sweep()
            orphans = await find_orphans(ctx.neutron, owners, octavia=ctx.octavia)
            failed = await remove(ctx.neutron, orphans, octavia=ctx.octavia)
        except errors.KuryrError as e:
            LOG.warning("gc: %s", e)
            ctx.metrics.gc_runs.labels(type(e).__name__).inc()
            continue
        failed_ids = {f.split(":", 1)[0] for f in failed}
        for orphan in orphans:
            if f"{orphan.kind} {orphan.resource_id}" not in failed_ids:
                ctx.metrics.gc_removed.labels(orphan.kind).inc()
        for failure in failed:
            LOG.warning("gc: could not remove %s", failure)
        ctx.metrics.gc_runs.labels("failed" if failed else "ok").inc()
