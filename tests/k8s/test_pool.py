"""The controller's per-node port pools, in this process, against the API double and the real
local Neutron: pods get ports the pool made beforehand with no port created on their way to a
VIF, the pool refills, the pods' ports become theirs in Neutron and carry traffic; a deleted
Node takes its pool ports with it; and the pool shortens the time from a pod to its VIF."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time
from typing import Any

import pytest

from kuryr import errors, model
from kuryr.controller import context
from kuryr.neutron import client, connecting
from kuryr.pools import nodes
from kuryr.ports import lifecycle
from tests.k8s.conftest import Cluster, eventually, metrics, running_controller
from tests.support import k8s, peers


def network_of(cluster: Cluster, namespace: str) -> Any:
    return ((cluster.get(k8s.KURYR_NETWORKS, namespace, namespace) or {}).get("status")
            or {}).get("netId")


async def full_pool(cluster: Cluster, size: int, node: str | None = None) -> list[Any]:
    """The pool ports (of ``node``) once there are ``size``, in Neutron and ready in the
    in-process controller's pool."""
    async def check() -> list[Any]:
        found = await cluster.pool_ports(node)
        ready = (await metrics(cluster)).get(("kuryr_pool_ready_ports", frozenset()), 0)
        return found if len(found) >= size and ready >= size else []

    return list(await eventually(check, what=f"{size} pool ports", within=60))


async def test_pods_take_pool_ports_without_a_port_create_and_the_pool_refills(
        cluster: Cluster, binders: Any, make_netns: Any) -> None:
    cluster.create_node()
    async with running_controller(cluster, pool_size=3, pool_batch=3):
        cluster.create_namespace("pool")
        network = await eventually(lambda: network_of(cluster, "pool"), what="network")
        before = {p.id: p for p in await full_pool(cluster, 3)}
        for port in before.values():
            assert port.network_id == network and port.host_id == cluster.node
            assert port.device_owner == "compute:kuryr" and nodes.is_unowned(port)
            assert port.device_id.startswith(nodes.BATCH_PREFIX)
            assert nodes.pool_node(port) == cluster.node
        names = ["a", "b", "c"]
        pods = {n: cluster.create_pod("pool", n) for n in names}
        vifs = {}
        for name in names:
            raw = await eventually(lambda n=name: cluster.vif("pool", n), what=f"VIF of {name}")
            vifs[name] = model.VIF.from_dict(raw)
        assert {v.port_id for v in vifs.values()} == set(before), "not the pool's ports"
        samples = await metrics(cluster)
        assert ("kuryr_neutron_calls_total",
                frozenset({("operation", "create port"), ("result", "ok")})) not in samples
        assert samples[("kuryr_pool_takes_total", frozenset({("result", "hit")}))] == 3

        # The pool refills (once the pods have had their head start): new ports.
        async def refilled() -> set[str]:
            fresh = {p.id for p in await cluster.pool_ports()} - set(before)
            ready = (await metrics(cluster)).get(("kuryr_pool_ready_ports", frozenset()), 0)
            return fresh if len(fresh) >= 3 and ready >= 3 else set()

        await eventually(refilled, what="3 new pool ports", within=60)

        netns = {}
        for name in ("a", "b"):
            netns[name] = make_netns()
            await lifecycle.plug_existing(cluster.neutron, binders, port_id=vifs[name].port_id,
                                          netns=netns[name], ifname="eth0", host=cluster.node)
            await eventually(lambda n=name: (cluster.vif("pool", n) or {}).get("is_active"),
                             what=f"{name} active")

        # A taken port becomes its pod's in Neutron once the pod has its network, or has
        # waited for it a while (until then its KuryrPort status alone records the owner).
        async def adopted(name: str) -> bool:
            uid = pods[name]["metadata"]["uid"]
            port = await cluster.neutron.get_port(vifs[name].port_id)
            return (port.device_id == uid and context.pod_tag(uid) in port.tags
                    and nodes.pool_node(port) is None and port.name == f"pool/{name}")

        for name in names:
            await eventually(lambda n=name: adopted(n), what=f"port of {name} retagged",
                             within=60)

        address = str(vifs["b"].fixed_ips[0].address.ip)
        assert await asyncio.to_thread(peers.ping_eventually, netns["a"], address, expect=True)
        for name in ("a", "b"):
            await lifecycle.detach(cluster.neutron, binders, port_id=vifs[name].port_id,
                                   netns=netns[name], ifname="eth0", delete_port=False)

        # The namespace goes: its pods' ports, the pool's ports on its network, the network.
        cluster.delete_namespace("pool")

        async def nothing_left() -> bool:
            return not await cluster.ports() and not await cluster.networks()

        await eventually(nothing_left, what="no Neutron resource left", within=60)


async def test_deleting_a_node_deletes_its_pool_ports(cluster: Cluster) -> None:
    other = f"kt-{cluster.cluster_id}-node"
    cluster.create_node()
    cluster.create_node(other)
    async with running_controller(cluster, pool_size=2, pool_batch=2):
        cluster.create_namespace("nodes")
        await full_pool(cluster, 2, cluster.node)
        doomed = {p.id for p in await full_pool(cluster, 2, other)}
        cluster.api.store.delete(k8s.NODES, None, other)

        async def gone() -> bool:
            return not await cluster.pool_ports(other)

        await eventually(gone, what="the deleted node's pool ports deleted")
        for port_id in doomed:
            with pytest.raises(errors.NotFoundError):
                await cluster.neutron.get_port(port_id)
        assert len(await cluster.pool_ports(cluster.node)) == 2


async def _times_to_vif(cluster: Cluster, namespace: str, count: int) -> list[float]:
    """Create ``count`` pods one after the other; for each, the seconds from its creation to
    its VIF in the KuryrPort status (polled every 5 ms)."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        cluster.create_pod(namespace, f"t{i}")
        while not cluster.vif(namespace, f"t{i}"):
            assert time.perf_counter() - started < 30, "no VIF within 30 s"
            await asyncio.sleep(0.005)
        times.append(time.perf_counter() - started)
    return times


async def test_pool_shortens_the_time_from_pod_to_vif(cluster: Cluster) -> None:
    count = 7
    cluster.create_node()
    measured = {}
    for label, size in (("cold", 0), ("pooled", count)):
        async with running_controller(cluster, pool_size=size, pool_batch=count):
            cluster.create_namespace(label)
            await eventually(lambda n=label: network_of(cluster, n), what="network")
            if size:
                await full_pool(cluster, size)
            measured[label] = await _times_to_vif(cluster, label, count)
            cluster.delete_namespace(label)

            async def released(n: str = label) -> bool:
                return cluster.get(k8s.NAMESPACES, None, n) is None

            await eventually(released, what=f"namespace {label} released", within=60)
    cold, pooled = (statistics.median(measured[k]) for k in ("cold", "pooled"))
    print(f"\npod to VIF in status, median of {count}: cold {cold * 1000:.0f} ms, "
          f"pooled {pooled * 1000:.0f} ms; all cold "
          f"{[round(t * 1000) for t in measured['cold']]}, all pooled "
          f"{[round(t * 1000) for t in measured['pooled']]}")
    assert pooled < cold


async def test_ports_of_a_bulk_create_that_timed_out_are_found_and_deleted(
        cluster: Cluster) -> None:
    """A bulk create that times out on kuryr's side still makes its ports in Neutron, untagged
    (tags come in a second request): the pool deletes them once they appear."""
    impatient = client.Neutron(connecting.connect(
        dataclasses.replace(cluster.config.neutron, timeout=2.0)), cluster_id=cluster.cluster_id)
    network = await cluster.neutron.create_network(f"kt-{cluster.cluster_id}-late")
    await cluster.neutron.create_subnet(network.id, cidr="100.124.0.0/24")
    # 30 ports take Neutron here several seconds: more than the 2 s kuryr waits. One try.
    pool = nodes.NodePools(impatient, size=30, batch=30, retry_delay=600.0)
    try:
        await pool.want({nodes.NodeKey(node=cluster.node, network_id=network.id)})

        async def late_ports() -> list[Any]:
            return await cluster.neutron.list_ports(name=nodes.port_name(cluster.cluster_id))

        late = await eventually(late_ports, what="ports of a timed-out request", within=60)
        assert pool.total() == 0 and all(not p.tags for p in late), "the requests did not fail"
        await pool.close()

        async def swept() -> bool:
            with contextlib.suppress(errors.TemporaryError):
                await pool.sweep()
            return not await late_ports()

        await eventually(swept, what="the late ports deleted", within=120)
    finally:
        await pool.close()
        impatient.close()
