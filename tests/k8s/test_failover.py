"""Two ``kuryr controller`` processes: one leads (holds the Lease), the other waits. The
leader is killed with SIGKILL while pods are created and deleted; the other takes over in
under 10 s, lists everything and reconciles, so every live pod ends with exactly one bound
Neutron port and every deleted pod with none."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import aiohttp

from kuryr.controller import context
from tests.k8s.conftest import Cluster, Start, eventually, free_port
from tests.support import k8s

LEASE = ("kube-system", "kuryr-controller")


def _holder(cluster: Cluster) -> str:
    lease = cluster.get(k8s.LEASES, *LEASE) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _pid(identity: str) -> int | None:
    """The pid in a holder identity (``<host>_<pid>_<random>``)."""
    parts = identity.split("_")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


async def test_failover_while_pods_are_created_and_deleted(
        cluster: Cluster, start_controller: Start) -> None:
    cluster.create_namespace(LEASE[0])
    first_port = free_port()
    first = await start_controller(leader_election="true", health_port=str(first_port))
    await eventually(lambda: _holder(cluster), what="a leader", within=20)
    second_port = free_port()
    second = await start_controller(leader_election="true", health_port=str(second_port))
    processes = {first.pid: first, second.pid: second}
    health = {first.pid: first_port, second.pid: second_port}
    cluster.create_namespace("ha")
    before = {f"p{i}": cluster.create_pod("ha", f"p{i}") for i in range(4)}
    for name in before:
        await eventually(lambda n=name: cluster.vif("ha", n), what=f"VIF of {name}", within=30)
    leader_pid = _pid(_holder(cluster))
    assert leader_pid in processes, _holder(cluster)
    leader = processes[leader_pid]
    follower = processes[next(p for p in processes if p != leader_pid)]
    assert follower.returncode is None, "the follower exited"
    async with aiohttp.ClientSession() as http:
        for pid, expected in ((leader_pid, 1.0), (follower.pid, 0.0)):
            base = f"http://127.0.0.1:{health[pid]}"
            async with http.get(base + "/readyz") as response:
                assert response.status == 200, "a waiting follower is ready to take over"
            async with http.get(base + "/metrics") as response:
                assert f"kuryr_controller_is_leader {expected}" in await response.text()

    killed_at = time.monotonic()
    leader.send_signal(signal.SIGKILL)
    # During the handover: new pods, and deletions the dead leader can no longer finish.
    during: dict[str, Any] = {}
    for i in range(4):
        during[f"q{i}"] = cluster.create_pod("ha", f"q{i}")
        await asyncio.sleep(0.5)
    deleted = ["p0", "p1", "q0"]
    for name in deleted:
        cluster.delete_pod("ha", name)
    await leader.wait()

    await eventually(lambda: _pid(_holder(cluster)) == follower.pid, what="a new leader",
                     within=15)
    failover = time.monotonic() - killed_at
    live = [n for n in [*before, *during] if n not in deleted]
    for name in live:
        await eventually(lambda n=name: cluster.vif("ha", n), what=f"VIF of {name}", within=20)
    for name in deleted:
        await eventually(lambda n=name: cluster.get(k8s.PODS, "ha", n) is None,
                         what=f"pod {name} released", within=20)
    settled = time.monotonic() - killed_at
    print(f"\nfailover: SIGKILL to new leader {failover:.2f} s; "
          f"to every pod reconciled {settled:.2f} s")
    assert failover < 10, f"failover took {failover:.2f} s"

    pods = {**before, **during}
    for name in live:
        uid = pods[name]["metadata"]["uid"]
        found = await cluster.neutron.list_ports(device_id=uid)
        assert len(found) == 1, f"pod {name} has {len(found)} ports"
        port = found[0]
        assert port.host_id == cluster.node and port.device_owner == "compute:kuryr"
        assert context.pod_tag(uid) in port.tags
        assert cluster.vif("ha", name)["port_id"] == port.id  # type: ignore[index]
    for name in deleted:
        uid = pods[name]["metadata"]["uid"]
        assert not await cluster.neutron.list_ports(device_id=uid), f"{name} leaked a port"
    assert len(await cluster.ports()) == len(live)
