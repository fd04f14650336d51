"""Pods and KuryrPorts: one Neutron port per pod, its VIF in the KuryrPort's status.

A scheduled pod that is not on the host network gets a finalizer and a KuryrPort (same name,
finalizer, ownerReference to the pod, spec ``podUid``/``podNodeName``). The KuryrPort gets a
Neutron port where ``placing`` says (``binding:host_id`` = node, ``device_owner
compute:kuryr``) and ``status.vifs.eth0`` (upstream's shape: ``{default, vif}``), with
``vif.is_active`` set once Neutron reports ACTIVE (``activating`` looks at every waiting port
in one call per interval; no worker waits).

The port is taken from the node's pool when it has one ready (``kuryr.pools.nodes``): no
Neutron call before the VIF is written. The KuryrPort status is the record of ownership: once
it names the port and the port is ACTIVE (or ``ADOPT_AFTER`` has passed), a run rewrites the
port's ``device_id``, name and owner tag (pool tags dropped) and deletes any other port of the
pod, so a controller killed anywhere neither duplicates nor leaks, and the pool rebuilt after
a restart leaves out every port a status names. Without a ready pool port, one is created
with ``device_id`` = pod UID and found again by it before another is made, which survives a
kill between Neutron's POST and its tagging.

Deletion, in order: pod marked deleted -> its KuryrPort deleted -> the Neutron port deleted ->
the KuryrPort finalizer removed -> the pod finalizer removed. Ports are not recycled into the
pool: nothing here knows when the node has unplugged a deleted pod's port.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from kuryr import errors
from kuryr.controller import context, placing, podgroups
from kuryr.k8s import api, resources
from kuryr.neutron import resources as neutron_resources
from kuryr.pools import nodes
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)
IFNAME = "eth0"
# Seconds after which a KuryrPort waiting for ACTIVE looks at its port itself, in case the
# shared wait (``activating``) lost it.
SAFETY_RECHECK = 30.0
# Seconds a pod's port may stay not ACTIVE before its owner is rewritten in Neutron anyway.
ADOPT_AFTER = 10.0


def is_networked(pod: api.Object) -> bool:
    """Whether kuryr gives this pod a port: scheduled and not on the host network."""
    spec = pod.get("spec") or {}
    return bool(spec.get("nodeName")) and not spec.get("hostNetwork")


def recorded_port_id(kuryr_port: api.Object) -> str | None:
    """The ID of the port a KuryrPort's status names, if any."""
    vif = (((kuryr_port.get("status") or {}).get("vifs") or {}).get(IFNAME) or {}).get("vif")
    port_id = vif.get("port_id") if isinstance(vif, dict) else None
    return str(port_id) if port_id else None


async def handle_pod(ctx: context.Context, namespace: str, name: str) -> float | None:
    pod = ctx.cached("pods", namespace, name)
    if pod is None or not is_networked(pod):
        return None
    port = ctx.cached("kuryrports", namespace, name)
    if pod["metadata"].get("deletionTimestamp"):
        if port is not None:
            if not port["metadata"].get("deletionTimestamp"):
                await ctx.kube.delete(resources.KURYR_PORTS, namespace, name)
            return None  # the KuryrPort's removal triggers this handler again
        await ctx.kube.set_finalizer(resources.PODS, pod, context.POD_FINALIZER, present=False)
        ctx.pods_seen.pop(pod["metadata"]["uid"], None)
        return None
    ctx.pods_seen.setdefault(pod["metadata"]["uid"], time.monotonic())
    await ctx.kube.set_finalizer(resources.PODS, pod, context.POD_FINALIZER, present=True)
    if port is None:
        meta = pod["metadata"]
        node = pod["spec"]["nodeName"]
        await ctx.kube.create(resources.KURYR_PORTS, namespace, {
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {context.NODE_LABEL: node},
                         "finalizers": [context.PORT_FINALIZER],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name,
                                              "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"podUid": meta["uid"], "podNodeName": node}})
    return None


async def handle_port(ctx: context.Context, namespace: str, name: str) -> float | None:
    kuryr_port = ctx.cached("kuryrports", namespace, name)
    if kuryr_port is None:
        return None
    pod_uid = str((kuryr_port.get("spec") or {}).get("podUid") or "")
    if not pod_uid:
        raise errors.PermanentError(f"KuryrPort {namespace}/{name} has no spec.podUid")
    if kuryr_port["metadata"].get("deletionTimestamp"):
        await _release(ctx, kuryr_port, pod_uid)
        return None
    recorded = recorded_port_id(kuryr_port)
    claim = ctx.claims.get(pod_uid)
    if recorded:
        if claim is not None and claim.port_id == recorded:
            del ctx.claims[pod_uid]
        elif claim is not None:  # the status names another port: the claimed one is no one's
            del ctx.claims[pod_uid]
            await _discard(ctx, claim)
        return await _follow(ctx, kuryr_port, recorded, pod_uid)
    if claim is None:
        placement = await placing.of_namespace(ctx, namespace)
        if placement is None:
            return None  # the KuryrNetwork's status triggers this handler again
        claim = await _claim(ctx, kuryr_port, placement, pod_uid)
        ctx.claims[pod_uid] = claim
    try:
        await _write_vif(ctx, kuryr_port, claim.vif)
    except errors.NotFoundError:  # the KuryrPort is gone: the write cannot have landed
        ctx.claims.pop(pod_uid, None)
        await _discard(ctx, claim)
        raise
    return None  # the status change triggers the next run: owner rewrite, ACTIVE


async def _claim(ctx: context.Context, kuryr_port: api.Object, placement: placing.Placement,
                 pod_uid: str) -> context.Claim:
    """A port for the pod: a ready one of its node's pool, else a new one."""
    node = str(kuryr_port["spec"].get("podNodeName") or "")
    meta = kuryr_port["metadata"]
    wanted = placement.security_group_ids
    if podgroups.is_on(ctx):
        pod = ctx.cached("pods", meta["namespace"], meta["name"])
        if pod is not None:
            wanted = podgroups.of_pod(ctx, pod)
    if ctx.pool is not None and ctx.pool.size > 0:
        taken = ctx.pool.take(pool_key(placement, node))
        ctx.metrics.pool_takes.labels("hit" if taken else "miss").inc()
        if taken is not None:
            LOG.info("pod %s/%s: pool port %s", meta["namespace"], meta["name"], taken.port.id)
            if wanted is not None and set(wanted) != set(taken.port.security_group_ids):
                # The pod's policies apply before its VIF is written, so before CNI ADD.
                try:
                    await ctx.neutron.update_port(taken.port.id,
                                                  security_group_ids=list(wanted))
                except BaseException:
                    await ctx.neutron.delete_port(taken.port.id)  # never handed to anyone
                    raise
            if wanted is not None:
                ctx.port_groups[taken.port.id] = tuple(wanted)
            return context.Claim(taken.port.id, _vif_dict(taken.vif, is_active=False),
                                 pooled=taken)
    if wanted != placement.security_group_ids:
        placement = dataclasses.replace(placement, security_group_ids=wanted)
    port = await _ensure_port(ctx, kuryr_port, placement, pod_uid)
    ctx.port_groups[port.id] = tuple(port.security_group_ids)
    vif = await ctx.neutron.vif_for_port(port)
    return context.Claim(port.id, _vif_dict(vif, is_active=port.is_active))


def pool_key(placement: placing.Placement, node: str) -> nodes.NodeKey:
    return nodes.NodeKey(node=node, network_id=placement.network_id,
                         subnet_id=placement.subnet_id, project_id=placement.project_id,
                         security_group_ids=placement.security_group_ids)


def _vif_dict(vif: Any, *, is_active: bool) -> dict[str, object]:
    found: dict[str, object] = vif.to_dict()
    found["is_active"] = is_active
    return found


async def _write_vif(ctx: context.Context, kuryr_port: api.Object,
                     vif: dict[str, object]) -> bool:
    """Write ``vif`` into the status unless it is there already; True if written."""
    status: dict[str, Any] = {"vifs": {IFNAME: {"default": True, "vif": vif}}}
    current = kuryr_port.get("status") or {}
    if current.get("vifs") == status["vifs"] and not current.get("conditions"):
        return False
    status["conditions"] = None
    meta = kuryr_port["metadata"]
    await ctx.kube.patch(resources.KURYR_PORTS, meta["namespace"], meta["name"],
                         {"status": status}, status=True)
    return True


async def _follow(ctx: context.Context, kuryr_port: api.Object, port_id: str,
                  pod_uid: str) -> float | None:
    """The status names ``port_id``: make the port the pod's in Neutron too, and mark the
    VIF active once Neutron says so."""
    meta = kuryr_port["metadata"]
    try:
        port = await ctx.neutron.get_port(port_id)
    except errors.NotFoundError:
        LOG.warning("pod %s/%s: its port %s is gone; giving it another", meta["namespace"],
                    meta["name"], port_id)
        await ctx.kube.patch(resources.KURYR_PORTS, meta["namespace"], meta["name"],
                             {"status": {"vifs": None}}, status=True)
        return None
    # Rewriting the owner in Neutron waits until the pod has its network, or has waited
    # ADOPT_AFTER (a controller that restarted knows no wait): on a busy Neutron the update
    # would slow the very ACTIVE the pod waits for. Meanwhile the status records the owner.
    waited = time.monotonic() - ctx.pods_seen.get(pod_uid, float("-inf"))
    if not _is_owned(ctx, port, pod_uid) and (port.is_active or waited > ADOPT_AFTER):
        await _adopt(ctx, kuryr_port, port, pod_uid)
    vif = dict(kuryr_port["status"]["vifs"][IFNAME]["vif"])
    vif["is_active"] = port.is_active
    is_written = await _write_vif(ctx, kuryr_port, vif)
    if not port.is_active:
        poll = ctx.config.kubernetes.port_active_poll
        if ctx.active_ports is None:
            return poll
        ctx.active_ports.wait_for(port.id, ("kuryrport", meta["namespace"], meta["name"]))
        return max(SAFETY_RECHECK, poll)  # should that wait ever be lost
    seen = ctx.pods_seen.pop(pod_uid, None)
    if seen is not None and is_written:
        ctx.metrics.pod_network_ready.observe(time.monotonic() - seen)
    return None


def _is_owned(ctx: context.Context, port: neutron_resources.Port, pod_uid: str) -> bool:
    tags = set(port.tags)
    return (port.device_id == pod_uid and nodes.pool_node(port) is None
            and {*ctx.neutron.base_tags, context.pod_tag(pod_uid)} <= tags)


async def _adopt(ctx: context.Context, kuryr_port: api.Object, port: neutron_resources.Port,
                 pod_uid: str) -> None:
    """Make a port the status names the pod's in Neutron (``device_id``, name, owner tag in
    place of the pool's) and delete any other port of the pod (a crash can leave one)."""
    meta = kuryr_port["metadata"]
    node = str(kuryr_port["spec"].get("podNodeName") or "")
    changes: dict[str, Any] = {"device_id": pod_uid, "name": f"{meta['namespace']}/{meta['name']}"}
    if port.host_id != node:
        changes["binding_host_id"] = node
    await ctx.neutron.update_port(port.id, tags=[context.pod_tag(pod_uid)], **changes)
    for extra in await _find_ports(ctx, pod_uid):
        if extra.id != port.id:
            LOG.warning("pod %s: deleting duplicate port %s", pod_uid, extra.id)
            await ctx.neutron.delete_port(extra.id)


async def _release(ctx: context.Context, kuryr_port: api.Object, pod_uid: str) -> None:
    """Delete every port of the pod (found by ``device_id``, named in the status or claimed),
    except the one its status names when its node's pool takes it back (``[kubernetes]
    pool_recycle``), then the KuryrPort's finalizer."""
    meta = kuryr_port["metadata"]
    ctx.pods_seen.pop(pod_uid, None)
    found = {p.id: p for p in await _find_ports(ctx, pod_uid)}
    port_ids = set(found)
    recorded = recorded_port_id(kuryr_port)
    claim = ctx.claims.pop(pod_uid, None)
    port_ids.update(i for i in (recorded, claim and claim.port_id) if i)
    for port_id in sorted(port_ids):
        ctx.port_groups.pop(port_id, None)
        if ctx.active_ports is not None:
            ctx.active_ports.forget(port_id)
        if port_id == recorded and await _recycle(ctx, port_id, found.get(port_id)):
            continue
        await ctx.neutron.delete_port(port_id)
    await ctx.kube.set_finalizer(resources.KURYR_PORTS, kuryr_port, context.PORT_FINALIZER,
                                 present=False)
    LOG.info("pod %s/%s: port released", meta["namespace"], meta["name"])


async def _recycle(ctx: context.Context, port_id: str,
                   port: neutron_resources.Port | None) -> bool:
    """Give a released pod's port back to its node's pool if recycling is on and that pool
    has room; False: the caller deletes it."""
    pool = ctx.pool
    if pool is None or pool.size <= 0 or not ctx.config.kubernetes.pool_recycle:
        return False
    try:
        if port is None:
            port = await ctx.neutron.get_port(port_id)
        key = pool.key_for(port)
        if key is None or not pool.has_room(key):
            return False
        return await pool.give_back(port.id, key, port_project=port.project_id)
    except errors.NotFoundError:
        return False


async def _discard(ctx: context.Context, claim: context.Claim) -> None:
    """A claimed port no status names: a pool port is deleted (no one else may ever get it,
    in case a write naming it lands late); a port made for the pod stays findable by its
    ``device_id``."""
    if claim.pooled is not None:
        await ctx.neutron.delete_port(claim.port_id)


async def _find_ports(ctx: context.Context, pod_uid: str) -> list[neutron_resources.Port]:
    return await ctx.neutron.list_ports(device_id=pod_uid,
                                        device_owner=lifecycle.DEVICE_OWNER)


async def _ensure_port(ctx: context.Context, kuryr_port: api.Object,
                       placement: placing.Placement, pod_uid: str) -> neutron_resources.Port:
    """The pod's Neutron port: found by device_id (then tagged and bound if it was left
    half-made), else created. Extra ports for the same pod (never made by this code, but a
    crash of an older one could) are deleted."""
    node = str(kuryr_port["spec"].get("podNodeName") or "")
    meta = kuryr_port["metadata"]
    tags = [context.pod_tag(pod_uid)]
    found = [p for p in await _find_ports(ctx, pod_uid)
             if p.network_id == placement.network_id]
    for extra in found[1:]:
        LOG.warning("pod %s: deleting duplicate port %s", pod_uid, extra.id)
        await ctx.neutron.delete_port(extra.id)
    if not found:
        fixed_ips = [{"subnet_id": placement.subnet_id}] if placement.subnet_id else None
        port = await ctx.neutron.create_port(
            placement.network_id, tags=tags, name=f"{meta['namespace']}/{meta['name']}",
            host_id=node, device_owner=lifecycle.DEVICE_OWNER, device_id=pod_uid,
            project_id=placement.project_id, fixed_ips=fixed_ips,
            security_group_ids=placement.security_group_ids)
        LOG.info("pod %s/%s: port %s", meta["namespace"], meta["name"], port.id)
        return port
    port = found[0]
    wanted = {*ctx.neutron.base_tags, *tags}
    if not wanted <= set(port.tags) or port.host_id != node:
        port = await ctx.neutron.update_port(port.id, tags=tags, binding_host_id=node)
    return port
