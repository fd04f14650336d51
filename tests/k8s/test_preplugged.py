"""Pre-plugged pool ports in Kubernetes mode: the controller lists its node's ready pool ports
in the node's KuryrNodePool, ``kuryr daemon --mode kubernetes`` (a subprocess, no Neutron
credentials) plugs them into the holding namespace before any pod asks and ovn-controller
installs them; a pod's CNI ADD then gets its port by a hand-over (the same OVS Interface, its
interface moved into the pod), pods ping at once, a deleted pod's port goes back to the pool
and is plugged ahead again, and a daemon killed with SIGKILL, also in the middle of a
hand-over, finds everything again with nothing leaked or shared."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

from kuryr import model, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.daemon import kubernetes, preplugging
from kuryr.linux import interfaces
from kuryr.linux import ovs as linux_ovs
from kuryr.pools import holding
from tests.k8s.conftest import Cluster, StartDaemon, eventually, running_controller
from tests.k8s.test_daemon_kubernetes import container_id, host_side, plugged, ready, run
from tests.support import cni, k8s, peers

POOL = 2


def listed(cluster: Cluster) -> set[str]:
    """The ports the node's KuryrNodePool lists."""
    found = cluster.get(k8s.KURYR_NODE_POOLS, None, cluster.node) or {}
    return set((found.get("status") or {}).get("ports") or {})


def held(binder: ovs_binding.OvsBinder, cluster: Cluster) -> dict[str, dict[str, str]]:
    """The ports plugged ahead for the cluster's node, installed, with their interface in the
    holding namespace: port ID -> the OVS Interface's external_ids."""
    return {port_id: ids for port_id, ids in binder.owned_ports().items()
            if ids.get(kubernetes.ID_MODE) == preplugging.POOL_MODE
            and ids.get(kubernetes.ID_CLUSTER) == cluster.cluster_id
            and ids.get(linux_ovs.INSTALLED_KEY) == "true"
            and interfaces.link_exists(holding.pool_ifname(port_id), netns=holding.POOL_NETNS)}


def interface_uuid(config: settings.KuryrSettings, port_id: str) -> str:
    """The OVS Interface row of a port: the same row before and after a hand-over."""
    return subprocess.run(
        ["ovs-vsctl", f"--db={config.binding.ovsdb_connection}", "get", "Interface",
         ovs_binding.host_ifname(port_id), "_uuid"], capture_output=True, text=True,
        check=True, timeout=10).stdout.strip()


async def pool_held(cluster: Cluster, binder: ovs_binding.OvsBinder,
                    size: int = POOL) -> set[str]:
    async def check() -> set[str]:
        ports = listed(cluster)
        plugged_ahead = await asyncio.to_thread(held, binder, cluster)
        return ports if len(ports) >= size and ports <= set(plugged_ahead) else set()

    return set(await eventually(check, what=f"{size} pool ports listed and plugged ahead",
                                within=60))


async def started(start_daemon: StartDaemon, **options: str) -> cni.DaemonProcess:
    daemon = await asyncio.to_thread(start_daemon, **options)

    async def is_ready() -> bool:
        return await asyncio.to_thread(ready, daemon) == 200

    await eventually(is_ready, what="daemon ready")
    return daemon


async def test_pods_get_ports_plugged_ahead_which_come_back_and_survive_a_restart(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: Any, binders: Any,
        make_netns: Any) -> None:
    ovs = binders["ovs"]
    cluster.create_node()
    async with running_controller(cluster, pool_size=POOL, pool_batch=POOL):
        daemon = await started(start_daemon)
        cluster.create_namespace("pre")
        ahead = await pool_held(cluster, ovs)
        rows = {p: await asyncio.to_thread(interface_uuid, cluster.config, p) for p in ahead}

        pods = {n: cluster.create_pod("pre", n) for n in ("a", "b")}
        netns = {n: make_netns() for n in pods}
        cids = {n: container_id() for n in pods}
        vifs = {}
        for name, pod in pods.items():
            rc, result = await run(cni_executable, "ADD", daemon, pod, container_id=cids[name],
                                   netns=netns[name])
            assert rc == 0, result
            vif = model.VIF.from_dict(cluster.vif("pre", name) or {})
            vifs[name] = vif
            assert vif.port_id in ahead, "the pod's port was not one plugged ahead"
            # A hand-over: the same OVS row, now the container's; the interface moved.
            assert await asyncio.to_thread(interface_uuid, cluster.config,
                                           vif.port_id) == rows[vif.port_id]
            ids = (await asyncio.to_thread(plugged, ovs, cids[name]))[vif.port_id]
            assert ids[kubernetes.ID_MODE] == kubernetes.MODE
            assert ids[kubernetes.ID_POD] == f"pre/{name}"
            assert not await asyncio.to_thread(interfaces.link_exists,
                                               holding.pool_ifname(vif.port_id),
                                               netns=holding.POOL_NETNS)
            seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=netns[name])
            assert seen is not None and seen["mac"] == vif.mac
            assert sorted(seen["addresses"]) == sorted(str(f.address) for f in vif.fixed_ips)
        assert "(pre-plugged)" in daemon.log.read_text()
        # Packets at once, both ways.
        for src, dst in (("a", "b"), ("b", "a")):
            address = str(vifs[dst].fixed_ips[0].address.ip)
            assert await asyncio.to_thread(peers.ping, netns[src], address, count=1), \
                f"{src} cannot ping {dst} at {address}"

        # The pool refills and its new ports are plugged ahead too.
        refilled = await pool_held(cluster, ovs)
        assert not refilled & {v.port_id for v in vifs.values()}

        # Pod a goes (its sandbox first, as a kubelet does): its port comes back to the pool
        # when that has room. The pool is full, so make room by taking one for pod c.
        pod_c = cluster.create_pod("pre", "c")
        ns_c, cid_c = make_netns(), container_id()
        rc, result = await run(cni_executable, "ADD", daemon, pod_c, container_id=cid_c,
                               netns=ns_c)
        assert rc == 0, result
        assert await run(cni_executable, "DEL", daemon, pods["a"], container_id=cids["a"],
                         netns=netns["a"]) == (0, None)
        cluster.delete_pod("pre", "a")
        recycled = vifs["a"].port_id
        await eventually(lambda: recycled in listed(cluster), what="pod a's port in the pool")

        async def held_again() -> bool:
            return recycled in await asyncio.to_thread(held, ovs, cluster)

        await eventually(held_again, what="pod a's port plugged ahead again", within=30)
        port = await cluster.neutron.get_port(recycled)
        assert port.device_id.startswith("kuryr-pool-batch:") and port.host_id == cluster.node

        # kill -9: a new daemon finds the held ports again (the same rows, none new).
        before = await asyncio.to_thread(held, ovs, cluster)
        daemon.stop(signal.SIGKILL)
        daemon = await started(start_daemon)
        found_again = f"pre-plugged pool ports: {len(before)} found again"
        await eventually(lambda: found_again in daemon.log.read_text(), what=found_again)
        after = await asyncio.to_thread(held, ovs, cluster)
        assert set(after) == set(before)
        pod_d = cluster.create_pod("pre", "d")
        ns_d, cid_d = make_netns(), container_id()
        rc, result = await run(cni_executable, "ADD", daemon, pod_d, container_id=cid_d,
                               netns=ns_d)
        assert rc == 0, result
        vif_d = model.VIF.from_dict(cluster.vif("pre", "d") or {})
        assert vif_d.port_id in before, "after a restart, not a port plugged ahead"
        assert await asyncio.to_thread(peers.ping, ns_d, str(vifs["b"].fixed_ips[0].address.ip),
                                       count=1)

        # Every pod's sandbox goes: nothing of theirs stays plugged.
        for pod, cid, ns in ((pods["b"], cids["b"], netns["b"]), (pod_c, cid_c, ns_c),
                             (pod_d, cid_d, ns_d)):
            assert await run(cni_executable, "DEL", daemon, pod, container_id=cid,
                             netns=ns) == (0, None)
            assert await asyncio.to_thread(plugged, ovs, cid) == {}


async def test_daemon_killed_in_a_hand_over_leaves_the_port_to_its_pod(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: Any, binders: Any,
        make_netns: Any) -> None:
    ovs = binders["ovs"]
    cluster.create_node()
    async with running_controller(cluster, pool_size=POOL, pool_batch=POOL):
        daemon = await started(start_daemon)
        cluster.create_namespace("kill")
        ahead = await pool_held(cluster, ovs)
        pod = cluster.create_pod("kill", "p")
        ns, cid = make_netns(), container_id()
        adding = asyncio.create_task(run(cni_executable, "ADD", daemon, pod, container_id=cid,
                                         netns=ns))
        # Kill the moment the hand-over has recorded the container (its first step).
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(plugged, ovs, cid):
            assert time.monotonic() < deadline and not adding.done(), await adding
            await asyncio.sleep(0.002)
        daemon.stop(signal.SIGKILL)
        rc, result = await adding
        print(f"\nkilled {'before' if rc != 0 else 'after'} the ADD answered: {result}")
        (port_id,) = await asyncio.to_thread(plugged, ovs, cid)
        assert port_id in ahead

        # The runtime tries again (a kubelet does after a failed ADD) on a new daemon.
        daemon = await started(start_daemon)
        rc, result = await run(cni_executable, "ADD", daemon, pod, container_id=cid, netns=ns)
        assert rc == 0, result
        vif = model.VIF.from_dict(cluster.vif("kill", "p") or {})
        assert vif.port_id == port_id
        seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=ns)
        assert seen is not None and seen["mac"] == vif.mac
        # Not held any more, not shared: one OVS row, the pod's.
        assert port_id not in await asyncio.to_thread(held, ovs, cluster)
        assert set(await asyncio.to_thread(plugged, ovs, cid)) == {port_id}
        assert await run(cni_executable, "DEL", daemon, pod, container_id=cid,
                         netns=ns) == (0, None)
        assert await asyncio.to_thread(host_side, ovs, port_id) == []
