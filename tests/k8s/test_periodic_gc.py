"""Garbage collection inside the leading controller, every ``[kubernetes] gc_interval``: it
removes what is tagged for the cluster and whose owner is gone (a pod's port, a pool port of a
Node that no longer exists, a namespace's network), counts it in the metrics, and leaves live
owners' resources and untagged ports alone."""

from __future__ import annotations

from kuryr import errors
from kuryr.controller import context
from kuryr.neutron import tagging
from kuryr.pools import nodes
from kuryr.ports import lifecycle
from tests.k8s.conftest import Cluster, eventually, metrics, running_controller


async def _exists(cluster: Cluster, port_id: str) -> bool:
    try:
        await cluster.neutron.get_port(port_id)
    except errors.NotFoundError:
        return False
    return True


async def test_periodic_gc_removes_orphans_and_leaves_live_and_untagged_alone(
        cluster: Cluster) -> None:
    neutron = cluster.neutron
    cluster.create_node()
    net = await neutron.create_network(f"kt-{cluster.cluster_id}-pgc")
    await neutron.create_subnet(net.id, cidr="100.125.0.0/24")
    # Untagged before the collector starts: the facade tags what it creates.
    untagged = await neutron.create_port(net.id, tags=[context.pod_tag("gone-too")],
                                         device_owner=lifecycle.DEVICE_OWNER,
                                         device_id="gone-too")
    try:
        await neutron.remove_tags("port", untagged.id,
                                  [*neutron.base_tags, context.pod_tag("gone-too")])
        async with running_controller(cluster, gc_interval=1.0):
            await _collect(cluster, net.id, untagged.id)
        assert tagging.KURYR not in (await neutron.get_port(untagged.id)).tags
    finally:
        await neutron.delete_port(untagged.id)


def _pool_tags(node: str, network_id: str) -> list[str]:
    key = nodes.NodeKey(node=node, network_id=network_id)
    return [tagging.owner(nodes.TAG_POOL_NODE, node),
            tagging.owner(nodes.TAG_POOL, key.tag_value())]


async def _collect(cluster: Cluster, network_id: str, untagged_id: str) -> None:
    """Plant orphans beside live resources while the controller runs; wait for the orphans
    to go and check that nothing else went."""
    neutron = cluster.neutron
    cluster.create_namespace("live")
    cluster.create_pod("live", "alive")
    live_vif = await eventually(lambda: cluster.vif("live", "alive"), what="a live VIF")
    orphan = await neutron.create_port(network_id, tags=[context.pod_tag("gone-pod-uid")],
                                       device_owner=lifecycle.DEVICE_OWNER,
                                       device_id="gone-pod-uid")
    # Pool ports planted after the controller read its pool back: it does not know them.
    gone_node = await neutron.create_port(
        network_id, tags=_pool_tags("kt-gone-node", network_id),
        device_owner=lifecycle.DEVICE_OWNER, name=nodes.port_name(cluster.cluster_id))
    live_node = await neutron.create_port(
        network_id, tags=_pool_tags(cluster.node, network_id),
        device_owner=lifecycle.DEVICE_OWNER, name=nodes.port_name(cluster.cluster_id))
    orphan_net = await neutron.create_network(
        f"kt-{cluster.cluster_id}-gone", tags=[context.namespace_tag("gone-namespace-uid")])

    async def collected() -> bool:
        return (not await _exists(cluster, orphan.id)
                and not await _exists(cluster, gone_node.id)
                and orphan_net.id not in {n.id for n in await cluster.networks()})

    await eventually(collected, what="the orphans removed", within=30)

    async def counted() -> bool:
        # A run counts what it removed once all of it is removed: the last removal can be
        # visible in Neutron a moment before the counters move.
        samples = await metrics(cluster)
        return (samples.get(("kuryr_gc_removed_total", frozenset({("kind", "port")})), 0) >= 2
                and samples.get(("kuryr_gc_removed_total",
                                 frozenset({("kind", "network")})), 0) >= 1
                and samples.get(("kuryr_gc_runs_total", frozenset({("result", "ok")})), 0) >= 1)

    await eventually(counted, what="the removals counted in the metrics", within=10)
    for kept in (untagged_id, live_node.id, live_vif["port_id"]):
        assert await _exists(cluster, kept), f"port {kept} removed"
