"""The cluster's address groups: one per peer (``policyspec.Peer``), holding the addresses of
the pods (or nodes, or CIDRs) it stands for, kept exact as pods come, go, change labels or
addresses and namespaces change labels. No rule changes when a member does.

All membership changes go through one reactor key (``handle``), under one lock shared with
``ensure`` (which makes the groups a policy's rules need before they are created), so two
writers never race on Neutron's strict ``add_addresses``/``remove_addresses``: each call
sends the exact difference from what the group held when last read. A group no policy
refers to any more is deleted (the nodes' group stays while policies are on).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from kuryr import errors
from kuryr.controller import context, policyspec, policyview
from kuryr.neutron import resources as neutron_resources

LOG = logging.getLogger(__name__)


def prefix(ctx: context.Context) -> str:
    return f"kuryr-{ctx.config.cluster_id}-ag-"


async def _load(ctx: context.Context) -> dict[str, context.AddressGroupState]:
    if ctx.address_groups is None:
        found = await ctx.neutron.list_address_groups()
        ctx.address_groups = {g.name: context.AddressGroupState(
            g.id, {_canonical(a) for a in g.addresses})
            for g in found if g.name.startswith(prefix(ctx))}
    return ctx.address_groups


async def ensure(ctx: context.Context, peers: Mapping[str, policyspec.Peer],
                 view: policyspec.View | None = None) -> dict[str, str]:
    """The IDs of the address groups of ``peers`` (by name), made with their current
    members if missing. Raises TemporaryError, PermanentError."""
    async with ctx.address_group_lock:
        return await _ensure(ctx, peers, view)


async def _ensure(ctx: context.Context, peers: Mapping[str, policyspec.Peer],
                  view: policyspec.View | None) -> dict[str, str]:
    state = await _load(ctx)
    for name, peer in sorted(peers.items()):
        if name in state:
            continue
        view = view or policyview.build(ctx)
        wanted = _wanted(peer, view)
        group = await ctx.neutron.create_address_group(
            name, addresses=sorted(wanted), description=_describe(peer),
            project_id=ctx.config.kubernetes.project_id or None)
        state[name] = context.AddressGroupState(group.id, set(wanted))
        LOG.info("address group %s: %s (%d addresses)", name, group.id, len(wanted))
    return {name: state[name].id for name in peers}


def wanted_peers(ctx: context.Context) -> dict[str, policyspec.Peer]:
    """Every peer a live KuryrNetworkPolicy refers to, and the nodes'."""
    peers = {policyspec.group_name(ctx.config.cluster_id, policyspec.nodes_peer()):
             policyspec.nodes_peer()}
    for knp in ctx.informers["kuryrnetworkpolicies"].objects.values():
        if not knp["metadata"].get("deletionTimestamp"):
            peers.update(policyspec.peers_of(knp.get("spec") or {}))
    return peers


async def handle(ctx: context.Context) -> float | None:
    """Make every address group hold exactly its peers' addresses; delete those no policy
    needs."""
    async with ctx.address_group_lock:
        # Read under the lock: a policy's ``ensure`` may just have made a group its
        # KuryrNetworkPolicy (already in the cache) names; it must not look unwanted here.
        peers = wanted_peers(ctx)
        view = policyview.build(ctx)
        await _ensure(ctx, peers, view)
        state = await _load(ctx)
        for name, peer in sorted(peers.items()):
            group = state[name]
            wanted = _wanted(peer, view)
            gone, new = sorted(group.addresses - wanted), sorted(wanted - group.addresses)
            try:
                if new:
                    await ctx.neutron.add_addresses(group.id, new)
                    group.addresses |= set(new)
                if gone:
                    await ctx.neutron.remove_addresses(group.id, gone)
                    group.addresses -= set(gone)
            except errors.ConflictError as e:
                # Someone else changed it (an older term of ours): read it again.
                ctx.address_groups = None
                raise errors.TemporaryError(f"address group {name}: {e}", delay=0.2) from e
            if new or gone:
                LOG.info("address group %s: +%d -%d addresses", name, len(new), len(gone))
        for name in sorted(set(state) - set(peers)):
            try:
                await ctx.neutron.delete_address_group(state[name].id)
            except errors.PermanentError as e:  # a rule still refers to it: next time
                LOG.debug("address group %s: not deleted yet: %s", name, e)
                continue
            del state[name]
            LOG.info("address group %s: deleted", name)
    return None


def _canonical(address: str) -> str:
    return neutron_resources.canonical_cidr(address)


def _wanted(peer: policyspec.Peer, view: policyspec.View) -> set[str]:
    """The peer's addresses in Neutron's canonical form (what the group will hold)."""
    return {_canonical(a) for a in policyspec.addresses(peer, view)}


def _describe(peer: policyspec.Peer) -> str:
    return ("kuryr: " + policyspec.describe(peer))[:255]
