"""The node daemon's Kubernetes mode as a kubelet's runtime drives it: ``kuryr daemon --mode
kubernetes`` in a subprocess whose Neutron settings point nowhere (a daemon that made a Neutron
client would not even start), the controller in this process, both on the API double and the
real Neutron, and the ``kuryr`` CNI executable invoked with the ``CNI_ARGS`` a CRI runtime
passes, into real network namespaces. ADD waits for the pod's VIF, plugs it and answers; pods
ping each other; DEL, also after the daemon was killed, leaves no veth and no OVS port; what
fails, fails within its bound, leaves nothing plugged and tells the pod in an Event."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import parser

from kuryr import binding, model
from kuryr.binding import ovs as ovs_binding
from kuryr.cni import codes
from kuryr.daemon import kubernetes
from kuryr.linux import interfaces
from kuryr.neutron import tagging
from tests.k8s.conftest import Cluster, StartDaemon, eventually
from tests.support import cni, k8s, peers


async def run(executable: pathlib.Path, command: str, daemon: cni.DaemonProcess,
              pod: dict[str, Any] | None, *, container_id: str, netns: str = "",
              cni_args: str | None = None, **extra: Any) -> tuple[int, dict[str, Any] | None]:
    """The executable run as a CRI runtime runs it for ``pod`` (in a thread: the API double
    answers from this event loop)."""
    if cni_args is None and pod is not None:
        meta = pod["metadata"]
        cni_args = cni.pod_args(meta["namespace"], meta["name"], meta["uid"], container_id)
    return await asyncio.to_thread(
        cni.invoke, executable, command, cni.kubernetes_netconf(daemon.socket, **extra),
        container_id=container_id,
        netns=f"/run/netns/{netns}" if netns else "", env={"CNI_ARGS": cni_args or ""})


def container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def plugged(ovs: ovs_binding.OvsBinder, container: str) -> dict[str, dict[str, str]]:
    """The OVS ports recorded for ``container``: port ID -> external_ids."""
    return {port_id: ids for port_id, ids in ovs.owned_ports().items()
            if ids.get(kubernetes.ID_CONTAINER) == container}


def host_side(ovs: ovs_binding.OvsBinder, port_id: str) -> list[str]:
    """What is left on the host of a port: its veth's host end and its OVS port."""
    tap = ovs_binding.host_ifname(port_id)
    found = [f"link {tap}"] if interfaces.link_exists(tap) else []
    if ovs.ovsdb.port_external_ids(tap) is not None:
        found.append(f"OVS port {tap}")
    return found


def metrics(daemon: cni.DaemonProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{daemon.health_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def cni_count(samples: dict[Any, float], command: str, result: str) -> float:
    return samples.get(("kuryr_cni_request_duration_seconds_count",
                        frozenset({("command", command), ("result", result)})), 0.0)


def ready(daemon: cni.DaemonProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.health_port}/readyz",
                                    timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture
def ovs(binders: dict[str, binding.Binder]) -> ovs_binding.OvsBinder:
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    return binder


async def test_cni_add_waits_for_the_vif_plugs_pods_that_ping_and_del_leaves_nothing(
        cluster: Cluster, controller: asyncio.Task[None], start_daemon: StartDaemon,
        cni_executable: pathlib.Path, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str]) -> None:
    daemon = await asyncio.to_thread(start_daemon)

    async def is_ready() -> bool:
        return await asyncio.to_thread(ready, daemon) == 200

    await eventually(is_ready, what="daemon ready (KuryrPorts listed, OVS answering)")
    cluster.create_namespace("web")
    names = ["a", "b", "c"]
    # As a kubelet does: the sandbox and the CNI ADD right after scheduling, before the
    # controller has made the namespace's network, let alone the pod's port.
    pods = {name: cluster.create_pod("web", name) for name in names}
    netns = {name: make_netns() for name in names}
    cids = {name: container_id() for name in names}
    started = time.monotonic()
    answers = await asyncio.gather(*(
        run(cni_executable, "ADD", daemon, pods[n], container_id=cids[n], netns=netns[n])
        for n in names))
    print(f"\n3 parallel ADDs from pod creation (network, ports and plug included): "
          f"{time.monotonic() - started:.2f} s")
    results = {}
    for name, (rc, result) in zip(names, answers, strict=True):
        assert rc == 0, result
        assert result is not None
        results[name] = result
        vif = model.VIF.from_dict(cluster.vif("web", name) or {})
        (interface,) = result["interfaces"]
        assert interface == {"name": "eth0", "mac": vif.mac, "sandbox": f"/run/netns/{netns[name]}"}
        assert [ip["address"] for ip in result["ips"]] == [str(f.address) for f in vif.fixed_ips]
        seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=netns[name])
        assert seen is not None and seen["mac"] == vif.mac
        ids = await asyncio.to_thread(plugged, ovs, cids[name])
        assert set(ids) == {vif.port_id}
        assert ids[vif.port_id][kubernetes.ID_POD] == f"web/{name}"
        assert ids[vif.port_id][kubernetes.ID_POD_UID] == pods[name]["metadata"]["uid"]
        # ADD answered once this node's ovn-controller had installed the port; the
        # controller records Neutron's ACTIVE afterwards, off the pod's path.
        assert ids[vif.port_id].get("ovn-installed") == "true", "ADD answered too early"
        await eventually(lambda n=name: (cluster.vif("web", n) or {}).get("is_active"),
                         what=f"the VIF of web/{name} marked active")
    for target in ("b", "c"):
        address = results[target]["ips"][0]["address"].split("/")[0]
        assert await asyncio.to_thread(peers.ping_eventually, netns["a"], address,
                                       expect=True), f"a cannot ping {target} at {address}"

    rc, out = await run(cni_executable, "CHECK", daemon, pods["a"], container_id=cids["a"],
                        netns=netns["a"], prevResult=results["a"])
    assert rc == 0 and out is None, out
    wrong = {**results["a"], "interfaces": [{**results["a"]["interfaces"][0],
                                             "mac": "fa:16:3e:ff:ff:ff"}]}
    rc, out = await run(cni_executable, "CHECK", daemon, pods["a"], container_id=cids["a"],
                        netns=netns["a"], prevResult=wrong)
    assert rc == 1 and out is not None and out["code"] == codes.CHECK_MISMATCH, out
    assert "has MAC" in out["msg"]
    rc, out = await run(cni_executable, "ADD", daemon, pods["a"], container_id=cids["a"],
                        netns=netns["a"])
    assert rc == 0 and out == results["a"], "a repeated ADD answers the same"

    port_ids = {n: model.VIF.from_dict(cluster.vif("web", n) or {}).port_id for n in names}
    for name in names:
        # The sandbox's netns is already gone for "c", as after a node reboot.
        rc, out = await run(cni_executable, "DEL", daemon, pods[name], container_id=cids[name],
                            netns="" if name == "c" else netns[name])
        assert rc == 0 and out is None, out
        assert await asyncio.to_thread(host_side, ovs, port_ids[name]) == []
        assert not await asyncio.to_thread(plugged, ovs, cids[name])
        if name != "c":
            assert not await asyncio.to_thread(interfaces.link_exists, "eth0",
                                               netns=netns[name])
        rc, out = await run(cni_executable, "DEL", daemon, pods[name], container_id=cids[name],
                            netns=netns[name])
        assert rc == 0 and out is None, f"a repeated DEL is success: {out}"

    samples = await asyncio.to_thread(metrics, daemon)
    assert cni_count(samples, "ADD", "ok") == 4
    assert cni_count(samples, "DEL", "ok") == 6
    assert cni_count(samples, "CHECK", "ok") == 1
    assert cni_count(samples, "CHECK", str(codes.CHECK_MISMATCH)) == 1
    assert samples[("kuryr_cni_request_duration_seconds_bucket",
                    frozenset({("command", "DEL"), ("result", "ok"), ("le", "0.5")}))] == 6

    for name in names:
        cluster.delete_pod("web", name)
    await eventually(lambda: not cluster.api.store.list(k8s.PODS, "web")[0], what="pods gone")
    cluster.delete_namespace("web")

    async def nothing_left() -> bool:
        return not await cluster.ports() and not await cluster.networks()

    await eventually(nothing_left, what="no Neutron resource left")


async def test_add_without_a_vif_fails_within_its_bound_leaving_nothing_and_an_event(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: pathlib.Path,
        ovs: ovs_binding.OvsBinder, make_netns: Callable[[], str]) -> None:
    # The same unreachable Neutron settings stop a standalone daemon at once: the daemon in
    # Kubernetes mode below runs only because it never makes a Neutron client.
    with pytest.raises(RuntimeError, match="cannot set up the Neutron client"):
        await asyncio.to_thread(start_daemon, mode="standalone")
    daemon = await asyncio.to_thread(start_daemon, vif_timeout="2")

    async def status() -> bool:
        answer = await run(cni_executable, "STATUS", daemon, None, container_id="",
                           cniVersion="1.1.0")
        return answer == (0, None)

    # Ready: KuryrPorts listed, OVS answering; no Neutron needed.
    await eventually(status, what="STATUS answered success", within=10)
    cluster.create_namespace("lonely")
    pod = cluster.create_pod("lonely", "p")  # no controller: no KuryrPort will come
    ns, cid = make_netns(), container_id()
    started = time.monotonic()
    rc, out = await run(cni_executable, "ADD", daemon, pod, container_id=cid, netns=ns)
    took = time.monotonic() - started
    assert rc == 1 and out is not None and out["code"] == codes.TRY_AGAIN_LATER, out
    assert "timed out after 2 s waiting for the VIF of pod lonely/p" in out["msg"]
    assert "no KuryrPort" in out["msg"]
    assert 2 <= took < 5, f"ADD failed after {took:.1f} s"
    assert not await asyncio.to_thread(plugged, ovs, cid)
    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)

    def failure_events() -> list[dict[str, Any]]:
        return [e for e in cluster.api.store.list(k8s.EVENTS, "lonely")[0]
                if e["reason"] == kubernetes.FAILED_REASON]

    (event,) = await eventually(failure_events, what="an Event on the pod", within=10)
    assert event["type"] == "Warning" and event["source"]["component"] == "kuryr-daemon"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "p",
                                       "namespace": "lonely",
                                       "uid": pod["metadata"]["uid"]}
    assert "timed out after 2 s" in event["message"]

    # The runtime's CNI_ARGS, malformed or incomplete: a clear error, no wait.
    rc, out = await run(cni_executable, "ADD", daemon, pod, container_id=cid, netns=ns,
                        cni_args="K8S_POD_NAMESPACE")
    assert rc == 1 and out is not None and out["code"] == codes.INVALID_ENVIRONMENT, out
    assert "not KEY=VALUE" in out["msg"]
    rc, out = await run(cni_executable, "ADD", daemon, pod, container_id=cid, netns=ns,
                        cni_args="K8S_POD_NAMESPACE=lonely;K8S_POD_NAME=p")
    assert rc == 1 and out is not None and out["code"] == codes.INVALID_ENVIRONMENT, out
    assert "CNI_ARGS lacks K8S_POD_UID" in out["msg"]

    samples = await asyncio.to_thread(metrics, daemon)
    assert cni_count(samples, "ADD", str(codes.TRY_AGAIN_LATER)) == 1
    assert cni_count(samples, "ADD", str(codes.INVALID_ENVIRONMENT)) == 2
    kuryrports = [urllib.parse.urlsplit(path) for _, path in cluster.api.requests
                  if "/kuryrports" in path]
    assert kuryrports, "the daemon never listed KuryrPorts"
    for url in kuryrports:  # only this node's, on every list and watch
        assert urllib.parse.parse_qs(url.query)["labelSelector"] == [
            f"kuryr.openstack.org/nodeName={cluster.node}"], url


async def test_a_vif_that_never_becomes_ready_is_unplugged_again(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: pathlib.Path,
        ovs: ovs_binding.OvsBinder, make_netns: Callable[[], str]) -> None:
    daemon = await asyncio.to_thread(start_daemon, vif_timeout="2")
    cluster.create_namespace("stuck")
    pod = cluster.create_pod("stuck", "p")
    # A KuryrPort as the controller writes it, for a port no Neutron knows: plugging works
    # (no Neutron call), but ovn-controller will never install it nor anything mark it active.
    port_id = str(uuid.uuid4())
    vif = model.VIF.from_dict({
        "schema": model.SCHEMA_VERSION, "port_id": port_id, "mac": "fa:16:3e:00:00:07",
        "network_id": "n", "mtu": 1400, "is_active": False,
        "fixed_ips": [{"address": "100.127.9.7/24", "subnet_id": "s"}],
        "subnets": [{"subnet_id": "s", "cidr": "100.127.9.0/24", "gateway": "100.127.9.1"}]})
    made = cluster.api.store.create(k8s.KURYR_PORTS, "stuck", {
        "metadata": {"name": "p", "labels": {"kuryr.openstack.org/nodeName": cluster.node}},
        "spec": {"podUid": pod["metadata"]["uid"], "podNodeName": cluster.node}})
    cluster.api.store.patch(k8s.KURYR_PORTS, "stuck", "p", lambda o: {
        **o, "status": {"vifs": {"eth0": {"default": True, "vif": vif.to_dict()}}}},
        status=True)
    assert made["metadata"]["name"] == "p"
    ns, cid = make_netns(), container_id()
    try:
        rc, out = await run(cni_executable, "ADD", daemon, pod, container_id=cid, netns=ns)
        assert rc == 1 and out is not None and out["code"] == codes.TRY_AGAIN_LATER, out
        # This node runs ovn-controller: readiness is its ovn-installed, which never comes.
        assert f"port {port_id} (OVS interface" in out["msg"]
        assert "was not installed by this node's ovn-controller within 2 s" in out["msg"]
        assert "unplugged it again" in out["msg"]
        assert await asyncio.to_thread(host_side, ovs, port_id) == []
        assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)
        await eventually(lambda: any(
            "not installed by this node's ovn-controller" in e["message"]
            for e in cluster.api.store.list(k8s.EVENTS, "stuck")[0]), what="Event", within=10)
    finally:
        await asyncio.to_thread(ovs.unplug_sync, port_id)


async def test_del_and_gc_after_the_daemon_was_killed(
        cluster: Cluster, controller: asyncio.Task[None], start_daemon: StartDaemon,
        cni_executable: pathlib.Path, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str]) -> None:
    daemon = await asyncio.to_thread(start_daemon)
    cluster.create_namespace("restart")
    pods = {n: cluster.create_pod("restart", n) for n in ("kept", "gone")}
    netns = {n: make_netns() for n in pods}
    cids = {n: container_id() for n in pods}
    for name, pod in pods.items():
        rc, out = await run(cni_executable, "ADD", daemon, pod, container_id=cids[name],
                            netns=netns[name])
        assert rc == 0, out
    port_ids = {n: model.VIF.from_dict(cluster.vif("restart", n) or {}).port_id for n in pods}

    await asyncio.to_thread(daemon.stop, signal.SIGKILL)
    await asyncio.to_thread(daemon.start)
    # GC as a runtime sends it, knowing only "kept": the other's port is unplugged.
    rc, out = await run(cni_executable, "GC", daemon, None, container_id="", **{
        "cniVersion": "1.1.0", "cni.dev/valid-attachments": [
            {"containerID": cids["kept"], "ifname": "eth0"}]})
    assert rc == 0 and out is None, out
    assert await asyncio.to_thread(host_side, ovs, port_ids["gone"]) == []
    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=netns["gone"])
    assert set(await asyncio.to_thread(plugged, ovs, cids["kept"])) == {port_ids["kept"]}

    await asyncio.to_thread(daemon.stop, signal.SIGKILL)
    await asyncio.to_thread(daemon.start)
    rc, out = await run(cni_executable, "DEL", daemon, pods["kept"], container_id=cids["kept"],
                        netns=netns["kept"])
    assert rc == 0 and out is None, out
    assert await asyncio.to_thread(host_side, ovs, port_ids["kept"]) == []
    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=netns["kept"])
    # Neutron still has both ports: the daemon never deletes one; the controller does.
    assert {p.id for p in await cluster.ports()} == set(port_ids.values())
    assert all(tagging.KURYR in p.tags for p in await cluster.ports())


async def test_a_lost_watch_makes_the_daemon_not_ready_until_it_watches_again(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: pathlib.Path) -> None:
    daemon = await asyncio.to_thread(start_daemon, watch_stale_after="1")

    def readiness(expected: int) -> Callable[[], Any]:
        async def check() -> bool:
            return await asyncio.to_thread(ready, daemon) == expected
        return check

    await eventually(readiness(200), within=10,
                     what="ready once KuryrPorts are listed")
    # The API server stops answering for KuryrPorts: the open watch ends, every list and
    # watch after it fails.
    path = "/apis/openstack.org/v1/kuryrports"
    cluster.api.fail(path, status=503, times=None)
    cluster.api.drop_watches(path)
    await eventually(readiness(503), within=15,
                     what="not ready once the watch has failed for more than 1 s")
    rc, out = await run(cni_executable, "STATUS", daemon, None, container_id="",
                        cniVersion="1.1.0")
    assert rc == 1 and out is not None and out["code"] == codes.NOT_AVAILABLE, out
    assert "lost the watch of the KuryrPorts" in out["msg"] and "503" in out["msg"], out

    cluster.api.clear_faults()
    await eventually(readiness(200), within=15,
                     what="ready again once the watch works")
    rc, out = await run(cni_executable, "STATUS", daemon, None, container_id="",
                        cniVersion="1.1.0")
    assert (rc, out) == (0, None)
