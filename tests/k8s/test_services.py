"""Services on Octavia, end to end: the controller against the API double (which allocates
clusterIPs and writes EndpointSlices as kube-controller-manager would) and the real local
Neutron, Octavia (OVN provider) and OVN; pods plugged into real network namespaces through the
CNI executable and a Kubernetes-mode daemon, answering TCP and UDP; every check is traffic
through the VIP (or the floating IP, from the cloud's outside namespace)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kuryr import settings
from kuryr.controller import collecting
from tests.conftest import unavailable
from tests.k8s import backends, conftest
from tests.k8s.backends import Pods, answered_by, ask, cluster_ip, klb_ready, reach
from tests.k8s.conftest import (
    Cluster,
    Start,
    StartDaemon,
    eventually,
    making_cluster,
    metrics,
    running_controller,
)
from tests.support import k8s

OUTSIDE_NETNS = "kuryr-outside"


@dataclasses.dataclass
class Scene:
    cluster: Cluster
    pods: Pods

    async def namespace(self, name: str) -> None:
        self.cluster.create_namespace(name)
        await eventually(lambda: ((self.cluster.get(k8s.KURYR_NETWORKS, name, name) or {})
                                  .get("status") or {}).get("netId"),
                         what=f"network of {name}", within=60)

    async def octavia_lbs(self) -> list[Any]:
        assert self.cluster.octavia is not None
        return await self.cluster.octavia.list_load_balancers(
            tags=list(self.cluster.neutron.base_tags))

    async def nothing_left(self) -> None:
        """No load balancer and no floating IP of the cluster remain."""
        async def check() -> bool:
            fips = await self.cluster.neutron.list_floating_ips(
                tags=list(self.cluster.neutron.base_tags))
            return not await self.octavia_lbs() and not fips
        await eventually(check, within=90, what="no load balancer or floating IP left")


@pytest.fixture
async def cluster(cloud_config: settings.KuryrSettings) -> AsyncIterator[Cluster]:
    """This module's clusters have Services: a service subnet on the cluster's router (its
    gateway on the cloud's external network), Octavia, clusterIPs and EndpointSlices."""
    async with making_cluster(cloud_config, with_services=True) as made:
        yield made


@pytest.fixture
async def daemon_and_pods(cluster: Cluster, start_daemon: StartDaemon,
                          cni_executable: pathlib.Path, make_netns: Callable[[], str]
                          ) -> AsyncIterator[Pods]:
    daemon = await asyncio.to_thread(start_daemon)
    pods = Pods(cluster, daemon, cni_executable, make_netns)
    try:
        yield pods
    finally:
        await pods.close()


@pytest.fixture
async def scene(cluster: Cluster, daemon_and_pods: Pods) -> AsyncIterator[Scene]:
    """The controller (in this process) with Services, a daemon, and a way to make pods."""
    async with running_controller(cluster):
        yield Scene(cluster, daemon_and_pods)


WEB_PORTS = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
             {"name": "dns", "port": 80, "targetPort": 5353, "protocol": "UDP"}]


async def test_a_cluster_ip_service_on_octavia_follows_its_backends_and_goes_cleanly(
        scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("back")
    await scene.namespace("front")
    labels = {"app": "web"}
    b1 = await pods.start("back", "b1", labels=labels, tcp=[8080], udp=[5353])
    b2 = await pods.start("back", "b2", labels=labels, tcp=[8080], udp=[5353])
    client = await pods.start("front", "client")
    service = backends.create_service(cluster, "back", "web", ports=WEB_PORTS, selector=labels)
    vip = cluster_ip(service)

    # Every backend answers, over TCP and UDP on the same port, and sees the client's own IP.
    answers = await reach(client.netns, vip, 80, expect={"b1", "b2"})
    assert {a.split()[1] for a in answers} == {client.ip}
    await reach(client.netns, vip, 80, expect={"b1", "b2"}, protocol="udp")

    # What a user checks: the KuryrLoadBalancer (upstream's fields) and Octavia's objects.
    klb = await klb_ready(cluster, "back", "web", members=4)
    assert klb["spec"]["ip"] == vip and klb["spec"]["type"] == "ClusterIP"
    assert {(p["protocol"], p["port"], p["targetPort"]) for p in klb["spec"]["ports"]} == \
        {("TCP", 80, "8080"), ("UDP", 80, "5353")}
    assert klb["metadata"]["ownerReferences"][0]["uid"] == service["metadata"]["uid"]
    assert klb["metadata"]["finalizers"] == ["kuryr.openstack.org/kuryrloadbalancer-finalizers"]
    status = klb["status"]
    assert status["loadbalancer"]["ip"] == vip and len(status["listeners"]) == 2
    assert {(m["ip"], m["port"]) for m in status["members"]} == \
        {(b1.ip, 8080), (b2.ip, 8080), (b1.ip, 5353), (b2.ip, 5353)}
    lbs = await scene.octavia_lbs()
    assert [lb.id for lb in lbs] == [status["loadbalancer"]["id"]]
    assert f"kuryr-service-uid={service['metadata']['uid']}" in lbs[0].tags

    # Scale up: the new backend gets traffic. Scale down: the removed one stops getting it.
    await pods.start("back", "b3", labels=labels, tcp=[8080], udp=[5353])
    await reach(client.netns, vip, 80, expect={"b1", "b2", "b3"})
    await pods.stop(b1)
    await reach(client.netns, vip, 80, expect={"b2", "b3"})
    await reach(client.netns, vip, 80, expect={"b2", "b3"}, protocol="udp")

    # Hairpin: a backend reaches itself through its own Service.
    hairpin = await ask(b2.netns, vip, 80, count=16)
    assert "b2" in answered_by(hairpin), hairpin
    assert not [a for a in hairpin if a.startswith("fail")], hairpin

    # Member changes were batch updates: one call per pool per change, never one per member.
    samples = await metrics(cluster)
    calls = {dict(labels)["operation"]: v for (n, labels), v in samples.items()
             if n == "kuryr_octavia_calls_total"}
    assert "create member" not in calls and calls.get("set members", 0) >= 4, calls
    assert samples[("kuryr_service_lb_ready_seconds_count", frozenset())] >= 1

    # Deleting the Service releases its load balancer and KuryrLoadBalancer.
    cluster.api.store.delete(k8s.SERVICES, "back", "web")
    await eventually(lambda: cluster.get(k8s.KURYR_LOAD_BALANCERS, "back", "web") is None,
                     what="KuryrLoadBalancer released", within=60)
    await scene.nothing_left()
    failed = await ask(client.netns, vip, 80, count=2)
    assert all(a.startswith("fail") for a in failed), failed


async def test_pods_made_before_the_cluster_had_services_get_the_service_group(
        cluster: Cluster) -> None:
    async with running_controller(cluster, service_subnet=None):
        cluster.create_namespace("early")
        cluster.create_pod("early", "p")
        vif = await eventually(lambda: cluster.vif("early", "p"), what="VIF", within=60)
    before = await cluster.neutron.get_port(str(vif["port_id"]))
    assert len(before.security_group_ids) == 1  # the project's default group only
    async with running_controller(cluster):
        [group] = await cluster.neutron.list_security_groups(
            tags=list(cluster.neutron.base_tags))

        async def adopted() -> bool:
            port = await cluster.neutron.get_port(str(vif["port_id"]))
            return set(port.security_group_ids) == {*before.security_group_ids, group.id}

        await eventually(adopted, within=30, what="the pod port with the Service group")


async def test_named_target_ports_that_differ_per_pod_and_several_ports(scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("apps")
    labels = {"app": "named"}
    await pods.start("apps", "n1", labels=labels, tcp=[8081, 9100],
                     container_ports=[{"name": "web", "containerPort": 8081},
                                      {"name": "metrics", "containerPort": 9100}])
    await pods.start("apps", "n2", labels=labels, tcp=[8082, 9100],
                     container_ports=[{"name": "web", "containerPort": 8082},
                                      {"name": "metrics", "containerPort": 9100}])
    client = await pods.start("apps", "client")
    service = backends.create_service(cluster, "apps", "named", selector=labels, ports=[
        {"name": "http", "port": 80, "targetPort": "web"},
        {"name": "metrics", "port": 9100, "targetPort": "metrics"}])
    vip = cluster_ip(service)
    await reach(client.netns, vip, 80, expect={"n1", "n2"})
    await reach(client.netns, vip, 9100, expect={"n1", "n2"})
    klb = await klb_ready(cluster, "apps", "named", members=4)
    assert len(klb["spec"]["endpointSlices"]) == 2, "one slice per resolved port set"
    assert {m["port"] for m in klb["status"]["members"]} == {8081, 8082, 9100}

    # A port the Service loses loses its listener and pool; the other keeps working.
    current = cluster.api.store.get(k8s.SERVICES, "apps", "named")
    current["spec"]["ports"] = current["spec"]["ports"][:1]
    cluster.api.store.replace(k8s.SERVICES, "apps", "named", current)
    klb = await klb_ready(cluster, "apps", "named", members=2)
    assert [listener["port"] for listener in klb["status"]["listeners"]] == [80]
    assert cluster.octavia is not None
    [lb] = await scene.octavia_lbs()
    assert [(ln.protocol, ln.protocol_port) for ln in
            await cluster.octavia.list_listeners(loadbalancer_id=lb.id)] == [("TCP", 80)]
    assert len(await cluster.octavia.list_pools(loadbalancer_id=lb.id)) == 1
    await reach(client.netns, vip, 80, expect={"n1", "n2"})


async def test_session_affinity_keeps_a_client_on_one_backend(scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("sticky")
    labels = {"app": "sticky"}
    for name in ("s1", "s2", "s3"):
        await pods.start("sticky", name, labels=labels, tcp=[8080])
    client = await pods.start("sticky", "client")
    service = backends.create_service(
        cluster, "sticky", "sticky", selector=labels,
        ports=[{"port": 80, "targetPort": 8080}], sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    vip = cluster_ip(service)
    await klb_ready(cluster, "sticky", "sticky", members=3)
    answers = await eventually(
        lambda: _all_answered(ask(client.netns, vip, 80, count=20)),
        within=60, what="20 answers through the VIP")
    assert len(answered_by(answers)) == 1, answers
    assert cluster.octavia is not None
    [lb] = await scene.octavia_lbs()
    [pool] = await cluster.octavia.list_pools(loadbalancer_id=lb.id)
    assert pool.lb_algorithm == "SOURCE_IP"


async def _all_answered(answers_coro: Any) -> list[str] | None:
    answers: list[str] = await answers_coro
    return answers if answers and not any(a.startswith("fail") for a in answers) else None


async def test_a_load_balancer_service_is_reached_from_outside_on_its_floating_ip(
        scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("pub")
    labels = {"app": "pub"}
    await pods.start("pub", "p1", labels=labels, tcp=[8080])
    await pods.start("pub", "p2", labels=labels, tcp=[8080])
    backends.create_service(cluster, "pub", "site", selector=labels, type="LoadBalancer",
                            ports=[{"port": 80, "targetPort": 8080}])

    def ingress() -> str | None:
        service = cluster.get(k8s.SERVICES, "pub", "site") or {}
        found = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return str(found[0]["ip"]) if found else None

    address = await eventually(ingress, within=90, what="the Service's ingress IP")
    klb = cluster.get(k8s.KURYR_LOAD_BALANCERS, "pub", "site") or {}
    assert klb["status"]["service_pub_ip_info"]["ip_addr"] == address
    assert klb["status"]["service_pub_ip_info"]["alloc_method"] == "kuryr"
    answers = await reach(OUTSIDE_NETNS, address, 80, expect={"p1", "p2"})
    assert all(a.split()[1].startswith("198.51.100.") for a in answers), answers
    cluster.api.store.delete(k8s.SERVICES, "pub", "site")
    await scene.nothing_left()


async def test_a_service_recreated_with_the_same_cluster_ip_works(scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("again")
    labels = {"app": "again"}
    await pods.start("again", "a1", labels=labels, tcp=[8080])
    client = await pods.start("again", "client")
    first = backends.create_service(cluster, "again", "svc", selector=labels,
                                    ports=[{"port": 80, "targetPort": 8080}])
    vip = cluster_ip(first)
    await reach(client.netns, vip, 80, expect={"a1"})
    cluster.api.store.delete(k8s.SERVICES, "again", "svc")
    second = backends.create_service(cluster, "again", "svc", selector=labels, clusterIP=vip,
                                     ports=[{"port": 80, "targetPort": 8080}])
    assert second["metadata"]["uid"] != first["metadata"]["uid"]

    def rebuilt() -> bool:
        klb = cluster.get(k8s.KURYR_LOAD_BALANCERS, "again", "svc") or {}
        owner = (klb.get("metadata", {}).get("ownerReferences") or [{}])[0].get("uid")
        return owner == second["metadata"]["uid"] and bool(
            ((klb.get("status") or {}).get("loadbalancer") or {}).get("id"))

    await eventually(rebuilt, within=90, what="the new Service's load balancer")
    await reach(client.netns, vip, 80, expect={"a1"}, within=90)
    [lb] = await scene.octavia_lbs()
    assert f"kuryr-service-uid={second['metadata']['uid']}" in lb.tags


async def test_a_service_without_selector_uses_the_users_endpoints_and_headless_gets_none(
        scene: Scene) -> None:
    cluster, pods = scene.cluster, scene.pods
    await scene.namespace("manual")
    target = await pods.start("manual", "t1", tcp=[7070])
    client = await pods.start("manual", "client")
    backends.create_service(cluster, "manual", "headless", selector={"app": "x"},
                            clusterIP="None", ports=[{"port": 80}])
    cluster.api.store.create(k8s.SERVICES, "manual", {
        "metadata": {"name": "external"},
        "spec": {"type": "ExternalName", "externalName": "example.invalid"}})
    service = backends.create_service(cluster, "manual", "byhand",
                                      ports=[{"name": "web", "port": 80, "targetPort": 7070}])
    cluster.api.store.create(k8s.ENDPOINT_SLICES, "manual", {
        "metadata": {"name": "byhand-1", "labels": {"kubernetes.io/service-name": "byhand"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [target.ip], "conditions": {"ready": True}}],
        "ports": [{"name": "web", "port": 7070, "protocol": "TCP"}]})
    await reach(client.netns, cluster_ip(service), 80, expect={"t1"})
    assert cluster.get(k8s.KURYR_LOAD_BALANCERS, "manual", "headless") is None
    assert cluster.get(k8s.KURYR_LOAD_BALANCERS, "manual", "external") is None
    assert len(await scene.octavia_lbs()) == 1


async def test_a_controller_killed_while_building_load_balancers_duplicates_and_leaks_nothing(
        cluster: Cluster, start_controller: Start, daemon_and_pods: Pods) -> None:
    cluster, pods = cluster, daemon_and_pods
    first = await start_controller()
    cluster.create_namespace("kill")
    await eventually(lambda: ((cluster.get(k8s.KURYR_NETWORKS, "kill", "kill") or {})
                              .get("status") or {}).get("netId"), what="network", within=60)
    labels = {"app": "k"}
    await pods.start("kill", "k1", labels=labels, tcp=[8080])
    client = await pods.start("kill", "client")
    names = ["s1", "s2", "s3"]
    made = {n: backends.create_service(cluster, "kill", n, selector=labels,
                                       ports=[{"port": 80, "targetPort": 8080}]) for n in names}
    assert cluster.octavia is not None

    async def some_lb() -> bool:
        assert cluster.octavia is not None
        return bool(await cluster.octavia.list_load_balancers(
            tags=list(cluster.neutron.base_tags)))

    await eventually(some_lb, within=60, what="a load balancer being built")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    await start_controller()
    for name in names:
        await reach(client.netns, cluster_ip(made[name]), 80, expect={"k1"}, within=120)
    lbs = await cluster.octavia.list_load_balancers(tags=list(cluster.neutron.base_tags))
    assert sorted(t for lb in lbs for t in lb.tags if t.startswith("kuryr-service-uid=")) == \
        sorted(f"kuryr-service-uid={s['metadata']['uid']}" for s in made.values())
    for name in names:
        cluster.api.store.delete(k8s.SERVICES, "kill", name)

    async def gone() -> bool:
        assert cluster.octavia is not None
        return not await cluster.octavia.list_load_balancers(
            tags=list(cluster.neutron.base_tags))

    await eventually(gone, within=120, what="every load balancer released")


class Gate:
    """Octavia through a forwarder on 127.0.0.1 (socat, started and ended by this test) that
    can be shut: Octavia unreachable, connections refused, as when its API is down."""

    def __init__(self, target: str = "127.0.0.1:9876") -> None:
        self.target = target
        self.port = conftest.free_port()
        self._process: subprocess.Popen[bytes] | None = None

    async def open(self) -> None:
        if shutil.which("socat") is None:
            unavailable("needs socat (apt-get install socat) to cut Octavia off")
        self._process = self._spawn()
        await eventually(lambda: _accepts(self.port), within=10, what="the forwarder")

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["socat", f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
             f"TCP:{self.target}"], start_new_session=True)

    async def shut(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)  # with its forked connections
            await asyncio.to_thread(self._process.wait)
        self._process = None


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_services_converge_once_octavia_is_back(cluster: Cluster,
                                                      daemon_and_pods: Pods) -> None:
    cluster, pods = cluster, daemon_and_pods
    gate = Gate()
    await gate.open()
    octavia = dataclasses.replace(cluster.config.octavia,
                                  endpoint_override=f"http://127.0.0.1:{gate.port}/")
    cluster = dataclasses.replace(cluster, config=dataclasses.replace(cluster.config,
                                                                      octavia=octavia))
    try:
        async with running_controller(cluster):
            cluster.create_namespace("outage")
            await eventually(lambda: ((cluster.get(k8s.KURYR_NETWORKS, "outage", "outage")
                                       or {}).get("status") or {}).get("netId"),
                             what="network", within=60)
            labels = {"app": "o"}
            await pods.start("outage", "o1", labels=labels, tcp=[8080])
            client = await pods.start("outage", "client")
            await gate.shut()
            service = backends.create_service(cluster, "outage", "svc", selector=labels,
                                              ports=[{"port": 80, "targetPort": 8080}])
            await eventually(lambda: cluster.get(k8s.KURYR_LOAD_BALANCERS, "outage", "svc"),
                             what="KuryrLoadBalancer", within=30)
            await asyncio.sleep(5)  # Octavia stays unreachable for a while
            klb = cluster.get(k8s.KURYR_LOAD_BALANCERS, "outage", "svc") or {}
            assert not (klb.get("status") or {}).get("loadbalancer")
            await gate.open()  # the same port again
            await reach(client.netns, cluster_ip(service), 80, expect={"o1"}, within=90)
    finally:
        await gate.shut()


async def test_gc_removes_load_balancers_and_floating_ips_whose_service_is_gone(
        cluster: Cluster) -> None:
    cluster = cluster
    assert cluster.octavia is not None
    async with running_controller(cluster):
        cluster.create_namespace("gc")
        service = backends.create_service(cluster, "gc", "orphan", type="LoadBalancer",
                                          ports=[{"port": 80, "targetPort": 8080}],
                                          selector={"app": "none"})
        await eventually(lambda: ((cluster.get(k8s.KURYR_LOAD_BALANCERS, "gc", "orphan")
                                   or {}).get("status") or {}).get("service_pub_ip_info"),
                         within=90, what="load balancer with a floating IP")
    # The controller is gone; so, as far as the collector is told, is the Service.
    uid = service["metadata"]["uid"]
    live = collecting.Owners(pod_uids=frozenset(), namespace_uids=frozenset(),
                             nodes=frozenset(), service_uids=frozenset({uid}))

    async def owners_with() -> collecting.Owners:
        return live

    async def owners_without() -> collecting.Owners:
        return dataclasses.replace(live, service_uids=frozenset())

    kept = await collecting.find_orphans(cluster.neutron, owners_with, octavia=cluster.octavia)
    assert not [o for o in kept if o.kind in ("loadbalancer", "floatingip")]
    orphans = [o for o in await collecting.find_orphans(
        cluster.neutron, owners_without, octavia=cluster.octavia)
        if o.kind in ("loadbalancer", "floatingip")]
    assert sorted(o.kind for o in orphans) == ["floatingip", "loadbalancer"]
    assert await collecting.remove(cluster.neutron, orphans, octavia=cluster.octavia) == []
    assert not await cluster.octavia.list_load_balancers(tags=list(cluster.neutron.base_tags))
    assert not await cluster.neutron.list_floating_ips(tags=list(cluster.neutron.base_tags))
