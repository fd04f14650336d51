"""Telling each node its pool ports: a cluster-scoped KuryrNodePool per Node, named after it
and labelled ``kuryr.openstack.org/nodeName=<node>``, whose status lists the node's ready pool
ports (``kuryr.pools.nodes``) with their VIFs, so that the node's daemon plugs them ahead of
their pods (``kuryr.daemon.preplugging``) and a pod's ADD only moves an installed interface.

Level-triggered, one reactor key per node: the status is made equal to the pool's ready ports
of the node, with one merge patch naming what changed (gone ports as null). A port taken for a
pod leaves the list as soon as it is taken; the daemon keeps it plugged until the pod's
KuryrPort names it. A Node gone, or the pool turned off, takes its KuryrNodePool with it.
"""

from __future__ import annotations

from typing import Any

from kuryr.controller import context
from kuryr.k8s import resources


def is_live(ctx: context.Context, node: str) -> bool:
    found = ctx.cached("nodes", "", node)
    return found is not None and not found["metadata"].get("deletionTimestamp")


async def handle_node_pool(ctx: context.Context, node: str) -> float | None:
    """Make the KuryrNodePool of ``node`` list exactly its ready pool ports."""
    current = ctx.cached("kuryrnodepools", "", node)
    if ctx.pool is None or ctx.pool.size <= 0 or not is_live(ctx, node):
        if current is not None:
            await ctx.kube.delete(resources.KURYR_NODE_POOLS, None, node)
        return None
    wanted: dict[str, Any] = {p.port.id: p.vif.to_dict() for p in ctx.pool.ready_on(node)}
    if current is None:
        current = await ctx.kube.create(resources.KURYR_NODE_POOLS, None, {
            "metadata": {"name": node, "labels": {resources.NODE_LABEL: node}},
            "spec": {"nodeName": node}})
    have = (current.get("status") or {}).get("ports") or {}
    if have == wanted:
        return None
    # A merge patch keeps the keys it does not name: name the gone ones as null.
    patch = {**{p: None for p in set(have) - set(wanted)},
             **{p: v for p, v in wanted.items() if have.get(p) != v}}
    await ctx.kube.patch(resources.KURYR_NODE_POOLS, None, node,
                         {"status": {"ports": patch}}, status=True)
    return None
