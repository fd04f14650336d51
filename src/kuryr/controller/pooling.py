"""The Kubernetes side of the per-node port pools (``kuryr.pools.nodes``): which pools to keep,
and the pool's recovery when a term as leader starts.

A pool is kept for every Node and every placement of a live namespace (``placing``: a
populated KuryrNetwork, or the default subnet in each namespace's project), ``[kubernetes]
pool_size`` ports each; a Node or network that goes takes its pool ports with it. At the start
of a term, once every informer has listed, the pool is read back from Neutron without the
ports any KuryrPort status names (those are pods', whatever their tags still say) and without
those of Nodes that no longer exist. Not the taking of ports (``ports``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kuryr import errors
from kuryr.controller import context, placing, ports

LOG = logging.getLogger(__name__)


def live_nodes(ctx: context.Context) -> set[str]:
    return {name for (_, name), node in ctx.informers["nodes"].objects.items()
            if not node["metadata"].get("deletionTimestamp")}


def owned_port_ids(ctx: context.Context) -> set[str]:
    """Every port a KuryrPort status names, and every port claimed for a pod."""
    named = (ports.recorded_port_id(p) for p in ctx.informers["kuryrports"].objects.values())
    return {p for p in named if p} | {c.port_id for c in ctx.claims.values()}


async def start(ctx: context.Context, stop: asyncio.Event) -> bool:
    """Read the pool back from Neutron (informers synced, no handler run yet), then keep the
    pools wanted now. Retries while Neutron is unavailable; False if ``stop`` came first. A
    pool that cannot be read back (PermanentError) starts empty: its old ports are given to
    no one, and garbage collection removes them with their Node."""
    assert ctx.pool is not None
    delay = 1.0
    while not stop.is_set():
        try:
            await ctx.pool.rebuild(owned=owned_port_ids(ctx), nodes=live_nodes(ctx))
            break
        except errors.TemporaryError as e:
            LOG.warning("pool: cannot read it back from Neutron: %s; again in %g s", e, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 30.0)
        except errors.PermanentError as e:
            LOG.error("pool: cannot read it back from Neutron: %s; starting empty", e)
            break
    else:
        return False
    try:
        await handle_pools(ctx)
    except errors.KuryrError as e:  # the reactor runs it again
        LOG.warning("pool: %s", e)
    return True


async def handle_pools(ctx: context.Context) -> float | None:
    """Keep a pool for every live Node and placement, and no other."""
    if ctx.pool is None:
        return None
    if ctx.pool.size <= 0:
        await ctx.pool.want(())
        return None
    placements = await placing.every(ctx)
    await ctx.pool.want({ports.pool_key(p, node)
                         for node in live_nodes(ctx) for p in placements})
    return None
