"""The controller as operators run it (``kuryr controller`` / ``kuryr gc`` subprocesses):
killed with SIGKILL while creating ports and restarted, it neither duplicates nor leaks; the
garbage collector removes an orphan port and network and never touches an untagged port."""

from __future__ import annotations

import asyncio
import signal
import sys

from kuryr.controller import context
from kuryr.neutron import tagging
from tests.k8s.conftest import Cluster, Start, environ, eventually
from tests.support import k8s


async def test_controller_killed_while_creating_ports_restarts_without_duplicate_or_leak(
        cluster: Cluster, start_controller: Start) -> None:
    first = await start_controller()
    cluster.create_namespace("kill")
    await eventually(lambda: ((cluster.get(k8s.KURYR_NETWORKS, "kill", "kill") or {})
                              .get("status") or {}).get("netId"), what="network", within=30)
    names = [f"p{i}" for i in range(6)]
    for name in names:  # hold the first VIF writes back, so the kill lands mid-creation
        cluster.api.delay(f"/apis/openstack.org/v1/namespaces/kill/kuryrports/{name}/status",
                          2.0, method="PATCH")
    pods = {name: cluster.create_pod("kill", name) for name in names}

    async def some_port() -> bool:
        return bool(await cluster.neutron.list_ports(device_owner="compute:kuryr",
                                                     tags=list(cluster.neutron.base_tags)))

    await eventually(some_port, what="a first port", within=30)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert not any(cluster.vif("kill", n) for n in names), "killed too late to test anything"

    await start_controller()
    for name in names:
        await eventually(lambda n=name: cluster.vif("kill", n), what=f"VIF of {name}")
    for name in names:
        uid = pods[name]["metadata"]["uid"]
        found = await cluster.neutron.list_ports(device_id=uid)
        assert len(found) == 1, f"pod {name} has {len(found)} ports"
        assert context.pod_tag(uid) in found[0].tags
        assert cluster.vif("kill", name)["port_id"] == found[0].id  # type: ignore[index]
    assert len(await cluster.ports()) == len(names)

    cluster.delete_namespace("kill")

    async def nothing_left() -> bool:
        return not await cluster.ports() and not await cluster.networks()

    await eventually(nothing_left, what="no Neutron resource left")


async def _gc(cluster: Cluster, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kuryr", "gc", *args, env=environ(cluster),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, out.decode()


async def test_gc_removes_orphans_and_leaves_untagged_alone(cluster: Cluster) -> None:
    neutron = cluster.neutron
    cluster.create_namespace("live")
    live_pod = cluster.create_pod("live", "alive")
    live_uid = live_pod["metadata"]["uid"]
    net = await neutron.create_network(f"kt-{cluster.cluster_id}-gc")
    await neutron.create_subnet(net.id, cidr="100.127.0.0/24", tags=[])
    orphan = await neutron.create_port(net.id, tags=[context.pod_tag("gone-pod-uid")],
                                       device_owner="compute:kuryr", device_id="gone-pod-uid")
    alive = await neutron.create_port(net.id, tags=[context.pod_tag(live_uid)],
                                      device_owner="compute:kuryr", device_id=live_uid)
    untagged = await neutron.create_port(net.id, tags=[context.pod_tag("gone-too")],
                                         device_owner="compute:kuryr", device_id="gone-too")
    await neutron.remove_tags("port", untagged.id,
                              [*neutron.base_tags, context.pod_tag("gone-too")])
    orphan_net = await neutron.create_network(
        f"kt-{cluster.cluster_id}-gone", tags=[context.namespace_tag("gone-namespace-uid")])
    try:
        code, out = await _gc(cluster)
        assert code == 0, out
        assert f"would remove port {orphan.id}" in out
        assert f"would remove network {orphan_net.id}" in out
        assert untagged.id not in out and alive.id not in out and net.id not in out
        assert (await neutron.get_port(orphan.id)).id == orphan.id  # a dry run removes nothing

        code, out = await _gc(cluster, "--apply")
        assert code == 0, out
        remaining = {p.id for p in await neutron.list_ports(network_id=net.id,
                                                             device_owner="compute:kuryr")}
        assert remaining == {alive.id, untagged.id}
        assert orphan_net.id not in {n.id for n in await cluster.networks()}
        assert tagging.KURYR not in (await neutron.get_port(untagged.id)).tags
    finally:
        await neutron.delete_port(untagged.id)
