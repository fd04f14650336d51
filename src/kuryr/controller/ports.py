"""Pods and KuryrPorts: one Neutron port per pod, its VIF in the KuryrPort's status.

A scheduled pod that is not on the host network gets a finalizer and a KuryrPort (same name,
finalizer, ownerReference to the pod, spec ``podUid``/``podNodeName``). The KuryrPort gets a
Neutron port on its namespace's network (``binding:host_id`` = node, ``device_owner
compute:kuryr``, ``device_id`` = pod UID, tags naming cluster and pod UID) and
``status.vifs.eth0`` (upstream's shape: ``{default, vif}``), with ``vif.is_active`` set once
Neutron reports ACTIVE (polled, not waited for in a worker). The port is found by
``device_id`` before one is created: that survives a controller killed between Neutron's POST
and the tagging that follows it, so a restart neither duplicates nor leaks.

Deletion, in order: pod marked deleted -> its KuryrPort deleted -> the Neutron port deleted ->
the KuryrPort finalizer removed -> the pod finalizer removed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kuryr import errors
from kuryr.controller import context
from kuryr.k8s import api, resources
from kuryr.neutron import resources as neutron_resources
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)
IFNAME = "eth0"


def is_networked(pod: api.Object) -> bool:
    """Whether kuryr gives this pod a port: scheduled and not on the host network."""
    spec = pod.get("spec") or {}
    return bool(spec.get("nodeName")) and not spec.get("hostNetwork")


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
    spec = kuryr_port.get("spec") or {}
    pod_uid = str(spec.get("podUid") or "")
    if not pod_uid:
        raise errors.PermanentError(f"KuryrPort {namespace}/{name} has no spec.podUid")
    if kuryr_port["metadata"].get("deletionTimestamp"):
        ctx.pods_seen.pop(pod_uid, None)
        for port in await _find_ports(ctx, pod_uid):
            await ctx.neutron.delete_port(port.id)
        await ctx.kube.set_finalizer(resources.KURYR_PORTS, kuryr_port, context.PORT_FINALIZER,
                                     present=False)
        LOG.info("pod %s/%s: port released", namespace, name)
        return None
    network = ctx.cached("kuryrnetworks", namespace, namespace)
    network_status = (network or {}).get("status") or {}
    if not network_status.get("netId"):
        return None  # the KuryrNetwork's status triggers this handler again
    port = await _ensure_port(ctx, kuryr_port, network, network_status["netId"], pod_uid)
    vif = await ctx.neutron.vif_for_port(port)
    vif_dict = vif.to_dict()
    vif_dict["is_active"] = port.status == "ACTIVE"
    status: dict[str, Any] = {"vifs": {IFNAME: {"default": True, "vif": vif_dict}}}
    current = kuryr_port.get("status") or {}
    is_written = current.get("vifs") != status["vifs"] or bool(current.get("conditions"))
    if is_written:
        status["conditions"] = None
        await ctx.kube.patch(resources.KURYR_PORTS, namespace, name, {"status": status},
                             status=True)
    seen = ctx.pods_seen.pop(pod_uid, None) if vif_dict["is_active"] else None
    if seen is not None and is_written:
        ctx.metrics.pod_network_ready.observe(time.monotonic() - seen)
    if port.status != "ACTIVE":
        return ctx.config.kubernetes.port_active_poll
    return None


async def _find_ports(ctx: context.Context, pod_uid: str) -> list[neutron_resources.Port]:
    return await ctx.neutron.list_ports(device_id=pod_uid,
                                        device_owner=lifecycle.DEVICE_OWNER)


async def _ensure_port(ctx: context.Context, kuryr_port: api.Object,
                       network: api.Object | None, network_id: str,
                       pod_uid: str) -> neutron_resources.Port:
    """The pod's Neutron port: found by device_id (then tagged and bound if it was left
    half-made), else created. Extra ports for the same pod (never made by this code, but a
    crash of an older one could) are deleted."""
    spec = kuryr_port["spec"]
    node = str(spec.get("podNodeName") or "")
    meta = kuryr_port["metadata"]
    tags = [context.pod_tag(pod_uid)]
    found = [p for p in await _find_ports(ctx, pod_uid) if p.network_id == network_id]
    for extra in found[1:]:
        LOG.warning("pod %s: deleting duplicate port %s", pod_uid, extra.id)
        await ctx.neutron.delete_port(extra.id)
    if not found:
        project_id = ((network or {}).get("spec") or {}).get("projectId") or None
        port = await ctx.neutron.create_port(
            network_id, tags=tags, name=f"{meta['namespace']}/{meta['name']}", host_id=node,
            device_owner=lifecycle.DEVICE_OWNER, device_id=pod_uid, project_id=project_id)
        LOG.info("pod %s/%s: port %s", meta["namespace"], meta["name"], port.id)
        return port
    port = found[0]
    wanted = {*ctx.neutron.base_tags, *tags}
    if not wanted <= set(port.tags) or port.host_id != node:
        port = await ctx.neutron.update_port(port.id, tags=tags, binding_host_id=node)
    return port
