"""Pods and namespaces onto Neutron, end to end: the controller (in this process) against the
Kubernetes API double and the real local Neutron; ports plugged into real namespaces by CNI ADD
through the ``kuryr`` executable and the daemon in Kubernetes mode (a subprocess)."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import uuid
from typing import Any

from kuryr import model
from kuryr.controller import running
from tests.k8s.conftest import Cluster, StartDaemon, eventually
from tests.support import cni, k8s, peers


async def test_namespace_pods_get_active_ports_that_ping_then_release_everything(
        cluster: Cluster, controller: asyncio.Task[None], start_daemon: StartDaemon,
        cni_executable: pathlib.Path, make_netns: Any) -> None:
    cluster.create_namespace("web")
    network = await eventually(
        lambda: ((cluster.get(k8s.KURYR_NETWORKS, "web", "web") or {}).get("status") or {}
                 ).get("netId"), what="KuryrNetwork status")
    status = cluster.get(k8s.KURYR_NETWORKS, "web", "web")["status"]  # type: ignore[index]
    assert status["subnetCIDR"].startswith("100.") and status["populated"] is True
    names = ["a", "b", "c"]
    pods = {name: cluster.create_pod("web", name) for name in names}
    vifs = {}
    for name in names:
        raw = await eventually(lambda n=name: cluster.vif("web", n), what=f"VIF of {name}")
        vifs[name] = model.VIF.from_dict(raw)
        assert vifs[name].network_id == network and not vifs[name].is_active
        kuryr_port = cluster.get(k8s.KURYR_PORTS, "web", name)
        assert kuryr_port is not None
        assert kuryr_port["spec"] == {"podUid": pods[name]["metadata"]["uid"],
                                      "podNodeName": cluster.node}
        assert kuryr_port["metadata"]["ownerReferences"][0]["uid"] == \
            pods[name]["metadata"]["uid"]
    ports = await cluster.ports()
    assert len(ports) == 3
    for port in ports:
        assert port.device_owner == "compute:kuryr" and port.host_id == cluster.node
        assert f"kuryr-cluster={cluster.cluster_id}" in port.tags
        assert any(t == f"kuryr-pod-uid={port.device_id}" for t in port.tags)

    daemon = await asyncio.to_thread(start_daemon)
    netns = {name: make_netns() for name in names}
    cids = {name: uuid.uuid4().hex for name in names}

    async def cni_call(command: str, name: str) -> tuple[int, dict[str, Any] | None]:
        uid = pods[name]["metadata"]["uid"]
        return await asyncio.to_thread(
            cni.invoke, cni_executable, command, cni.kubernetes_netconf(daemon.socket),
            container_id=cids[name], netns=f"/run/netns/{netns[name]}",
            env={"CNI_ARGS": cni.pod_args("web", name, uid, cids[name])})

    for name in names:
        rc, result = await cni_call("ADD", name)
        assert rc == 0, result
        assert result is not None and result["interfaces"][0]["mac"] == vifs[name].mac
        await eventually(lambda n=name: (cluster.vif("web", n) or {}).get("is_active"),
                         what=f"the VIF of web/{name} marked active")
    for target in ("b", "c"):
        address = str(vifs[target].fixed_ips[0].address.ip)
        assert await asyncio.to_thread(peers.ping_eventually, netns["a"], address,
                                       expect=True), f"a cannot ping {target} at {address}"

    # A pod goes: its sandbox (CNI DEL), then its port, then its KuryrPort, then the pod.
    assert await cni_call("DEL", "a") == (0, None)
    cluster.delete_pod("web", "a")
    await eventually(lambda: cluster.get(k8s.PODS, "web", "a") is None, what="pod a removed")
    assert cluster.get(k8s.KURYR_PORTS, "web", "a") is None
    assert {p.id for p in await cluster.ports()} == {vifs[n].port_id for n in ("b", "c")}

    # Then the namespace: the other pods' ports, then the network, subnet and interface.
    for name in ("b", "c"):
        assert await cni_call("DEL", name) == (0, None)
    cluster.delete_namespace("web")
    await eventually(lambda: cluster.get(k8s.NAMESPACES, None, "web") is None,
                     what="namespace removed")

    async def nothing_left() -> bool:
        return not await cluster.ports() and not await cluster.networks()

    await eventually(nothing_left, what="no Neutron resource left")
    assert not await cluster.neutron.list_ports(network_id=network)


async def test_namespace_of_another_project_lands_on_another_network(
        cluster: Cluster, controller: asyncio.Task[None]) -> None:
    other_project = f"kt-{cluster.cluster_id}-other"
    cluster.create_namespace("mine")
    cluster.create_namespace("theirs", project=other_project)
    cluster.create_pod("mine", "p")
    cluster.create_pod("theirs", "q")
    mine = await eventually(lambda: cluster.vif("mine", "p"), what="VIF in mine")
    theirs = await eventually(lambda: cluster.vif("theirs", "q"), what="VIF in theirs")
    assert mine["network_id"] != theirs["network_id"]
    network = await cluster.neutron.get_network(theirs["network_id"])
    assert network.project_id == other_project
    port = await cluster.neutron.get_port(theirs["port_id"])
    assert port.project_id == other_project
    spec = cluster.get(k8s.KURYR_NETWORKS, "theirs", "theirs")["spec"]  # type: ignore[index]
    assert spec["projectId"] == other_project and spec["nsName"] == "theirs"
    for name in ("mine", "theirs"):
        cluster.delete_namespace(name)

    async def nothing_left() -> bool:
        return not await cluster.ports() and not await cluster.networks()

    await eventually(nothing_left, what="no Neutron resource left")


async def test_permanent_error_becomes_an_event_and_a_status_condition(
        cluster: Cluster) -> None:
    kubernetes = dataclasses.replace(cluster.config.kubernetes,
                                     pod_subnet_pool=f"kt-{cluster.cluster_id}-no-such-pool")
    config = dataclasses.replace(cluster.config, kubernetes=kubernetes)
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(config, stop=stop))
    try:
        cluster.create_namespace("broken")

        def failed() -> Any:
            status = (cluster.get(k8s.KURYR_NETWORKS, "broken", "broken") or {}).get("status")
            return [c for c in (status or {}).get("conditions") or [] if c["type"] == "Failed"]

        condition = (await eventually(failed, what="Failed condition"))[0]
        assert condition["status"] == "True" and "no-such-pool" in condition["message"]
        events = cluster.api.store.list(k8s.EVENTS, "broken")[0]
        assert any(e["involvedObject"]["kind"] == "KuryrNetwork" and e["type"] == "Warning"
                   and "no-such-pool" in e["message"] for e in events)
        assert not await cluster.networks()  # nothing made before the failure
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
