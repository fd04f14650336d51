"""The port pool across a crash, as operators run the controller (``kuryr controller``
subprocesses): killed with SIGKILL while many pods take pool ports (some VIFs written, some
writes in flight, new ports being made), the restarted controller rebuilds the pool from
Neutron tags after its informers have listed, and ends with every pod on its own port, no
port made twice, none leaked and no pool port that a KuryrPort names."""

from __future__ import annotations

import signal
from typing import Any

from kuryr.controller import context
from kuryr.pools import nodes
from tests.k8s.conftest import Cluster, Start, eventually
from tests.support import k8s

POOL = {"pool_size": "4", "pool_batch": "2"}


async def test_controller_killed_amid_pooled_pods_restarts_without_duplicate_leak_or_sharing(
        cluster: Cluster, start_controller: Start) -> None:
    cluster.create_node()
    first = await start_controller(**POOL)
    cluster.create_namespace("crash")
    network = await eventually(
        lambda: ((cluster.get(k8s.KURYR_NETWORKS, "crash", "crash") or {}).get("status")
                 or {}).get("netId"), what="network", within=30)

    async def pool_of(size: int) -> list[Any]:
        found = await cluster.pool_ports(cluster.node)
        return found if len(found) >= size else []

    await eventually(lambda: pool_of(4), what="a full pool", within=60)
    names = [f"p{i}" for i in range(12)]
    # The first pods take the pool's 4 ports, the others get new ones. These VIF writes are
    # still in flight when the kill lands: two pool ports and four new ones given out, and
    # no status names them.
    for name in ["p2", "p3", *names[8:]]:
        cluster.api.delay(f"/apis/openstack.org/v1/namespaces/crash/kuryrports/{name}/status",
                          3.0, method="PATCH")
    pods = {name: cluster.create_pod("crash", name) for name in names}
    await eventually(lambda: sum(1 for n in names if cluster.vif("crash", n)) >= 3,
                     what="some VIFs written", within=30)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    written = [n for n in names if cluster.vif("crash", n)]
    assert len(written) < len(names), "killed too late to test anything"

    await start_controller(**POOL)
    for name in names:
        await eventually(lambda n=name: cluster.vif("crash", n), what=f"VIF of {name}",
                         within=60)
    vif_ports = {n: cluster.vif("crash", n)["port_id"] for n in names}  # type: ignore[index]
    assert len(set(vif_ports.values())) == len(names), "two pods on one port"

    async def settled() -> bool:
        for name in names:
            uid = pods[name]["metadata"]["uid"]
            found = await cluster.neutron.list_ports(device_id=uid)
            if [p.id for p in found] != [vif_ports[name]]:
                return False
            port = found[0]
            if context.pod_tag(uid) not in port.tags or nodes.pool_node(port) is not None:
                return False
        return len(await cluster.pool_ports()) == 4

    await eventually(settled, what="every pod on its own port, the pool full", within=60)
    pool = {p.id for p in await cluster.pool_ports()}
    assert not pool & set(vif_ports.values()), "a pool port is a pod's"
    on_network = {p.id for p in await cluster.neutron.list_ports(
        network_id=network, device_owner="compute:kuryr")}
    assert on_network == set(vif_ports.values()) | pool, "a port leaked"
    untagged = [p for p in await cluster.neutron.list_ports(
        name=nodes.port_name(cluster.cluster_id)) if p.id not in pool]
    assert not untagged, f"pool ports left untagged or unowned: {untagged}"

    cluster.delete_namespace("crash")

    async def nothing_left() -> bool:
        return not await cluster.ports() and not await cluster.networks()

    await eventually(nothing_left, what="no Neutron resource left", within=60)
