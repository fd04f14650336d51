"""NetworkPolicy in the data plane: the upstream e2e layout (namespaces x, y, z; pods a, b, c
in each, serving TCP and UDP on 80 and 81 through named ports), plugged into real network
namespaces through the CNI executable and a Kubernetes-mode daemon, on the real local
Neutron and OVN; the controller (with ``network_policy``) against the API double. Every case
probes every pair with real connections, in parallel, and compares with the truth table the
reference model (``tests.support.netpol.model``, written from the spec, sharing no code with
the controller) computes for the policies and labels the double holds. Each case prints how
long the change took to be enforced.

One scene (cluster, daemon, pods, agents) serves the whole module: each test sets the
policies it needs (the others are deleted) and restores any label it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from kuryr import settings
from kuryr.controller import collecting, context
from kuryr.k8s import api
from kuryr.linux import namespaces as linux_namespaces
from tests.conftest import RUN_ID
from tests.k8s import backends
from tests.k8s.conftest import (
    UNREACHABLE_NEUTRON,
    Cluster,
    StartDaemon,
    environ,
    eventually,
    making_cluster,
    running_controller,
)
from tests.support import cni, k8s
from tests.support.netpol import layout, matrix, model, prober

pytestmark = pytest.mark.asyncio(loop_scope="session")
LAYOUT = layout.Layout()
# Open vSwitch 3.1.0's userspace conntrack can abort under this much connection churn; the
# local cloud's monitor restarts it at once and OVN reinstalls its flows within seconds: the
# window leaves room for one such restart.
ENFORCE_WITHIN = 60.0
ENFORCED: list[tuple[str, float]] = []  # (case, seconds), printed at the end


@dataclasses.dataclass
class World:
    cluster: Cluster
    pods: backends.Pods
    probe: prober.Prober
    by_key: dict[str, backends.Pod]

    @property
    def store(self) -> Any:
        return self.cluster.api.store

    def policies(self) -> list[dict[str, Any]]:
        return list(self.store.list(k8s.NETWORK_POLICIES, None)[0])

    def apply(self, *policies: dict[str, Any]) -> float:
        """Make the double hold exactly ``policies`` (created, replaced or deleted); returns
        when the change was made (monotonic)."""
        wanted = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in policies}
        for existing in self.policies():
            meta = existing["metadata"]
            if (meta["namespace"], meta["name"]) not in wanted:
                self.store.delete(k8s.NETWORK_POLICIES, meta["namespace"], meta["name"])
        for (namespace, name), policy in wanted.items():
            current = self.cluster.get(k8s.NETWORK_POLICIES, namespace, name)
            if current is None:
                self.store.create(k8s.NETWORK_POLICIES, namespace, policy)
            elif current.get("spec") != policy.get("spec"):
                self.store.replace(k8s.NETWORK_POLICIES, namespace, name,
                                   {**policy, "metadata": current["metadata"]})
        return time.monotonic()

    def expected(self, keys: Iterable[str] | None = None) -> matrix.Matrix:
        keys = list(keys or LAYOUT.keys())
        pods = [self.store.get(k8s.PODS, *key.split("/")) for key in keys]
        reference = model.Cluster(self.store.list(k8s.NAMESPACES, None)[0], pods,
                                  self.policies())
        return reference.matrix(keys, cases=LAYOUT.cases())

    async def observed(self, keys: Iterable[str] | None = None) -> matrix.Matrix:
        keys = list(keys or LAYOUT.keys())
        return await self.probe.probe_all(itertools.product(keys, repeat=2),
                                          ports=LAYOUT.ports, protocols=LAYOUT.protocols)

    async def enforced(self, case: str, since: float, *, keys: Iterable[str] | None = None,
                       within: float = ENFORCE_WITHIN) -> float:
        """Probe until the data plane shows the model's truth table; the seconds it took."""
        keys = list(keys or LAYOUT.keys())
        expected = self.expected(keys)
        last: matrix.Matrix | None = None
        while True:
            last = await self.observed(keys)
            if not matrix.diff(expected, last):
                took = time.monotonic() - since
                ENFORCED.append((case, took))
                print(f"{case}: enforced in {took:.2f} s "
                      f"({expected.count(True)} allowed, {expected.count(False)} denied)")
                return took
            if time.monotonic() - since > within:
                pytest.fail(f"{case}: not enforced within {within} s:\n"
                            f"{matrix.diff(expected, last).render()}\n"
                            f"{await self.diagnosis(keys)}")
            await asyncio.sleep(0.5)


    async def diagnosis(self, keys: Iterable[str]) -> str:
        """What to look at when a case fails: each pod's security groups by name, and
        whether ovs-vswitchd restarted (its monitor counts crashes)."""
        neutron = self.cluster.neutron
        names = {g.id: g.name for g in await neutron.list_security_groups(
            tags=list(neutron.base_tags))}
        lines = []
        for key in keys:
            vif = self.cluster.vif(*key.split("/"))
            if vif is None:
                continue
            port = await neutron.get_port(str(vif["port_id"]))
            lines.append(f"{key}: " + ", ".join(sorted(names.get(g, g)
                                                      for g in port.security_group_ids)))
        found = await asyncio.to_thread(subprocess.run,
                                        ["pgrep", "-a", "-f", "ovs-vswitchd: monitoring"],
                                        capture_output=True, text=True)
        monitor = found.stdout.strip()
        return "security groups:\n" + "\n".join(lines) + f"\novs-vswitchd: {monitor}"


@pytest.fixture(scope="module")
async def world(cloud_config: settings.KuryrSettings, cni_executable: pathlib.Path,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    made_netns: list[str] = []

    def make_netns() -> str:
        name = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        linux_namespaces.create(name)
        made_netns.append(name)
        return name

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lambda: [linux_namespaces.remove(n) for n in made_netns])
        cluster = await stack.enter_async_context(
            making_cluster(cloud_config, with_services=True))
        env = {**environ(cluster), **UNREACHABLE_NEUTRON, "KURYR_BINDING_HOST": cluster.node}
        daemon = cni.DaemonProcess(tmp_path_factory.mktemp("kd"), config_file=None, env=env,
                                   mode="kubernetes")
        daemon.start()
        stack.callback(daemon.stop)
        await stack.enter_async_context(running_controller(cluster, network_policy=True))
        pods = backends.Pods(cluster, daemon, cni_executable, make_netns)
        stack.push_async_callback(pods.close)
        for namespace in (*LAYOUT.namespaces, "infra"):
            cluster.api.store.create(k8s.NAMESPACES, None,
                                     layout.namespace_spec(namespace, labels={"ns": namespace}))
        for namespace in (*LAYOUT.namespaces, "infra"):
            await eventually(lambda ns=namespace: ((cluster.get(  # type: ignore[misc]
                k8s.KURYR_NETWORKS, ns, ns) or {}).get("status") or {}).get("netId"),
                what=f"network of {namespace}", within=90)
        # A few at once: each CNI ADD holds a thread of the loop's default executor while
        # it waits, and the controller in this process needs threads for Neutron calls.
        slots = asyncio.Semaphore(3)

        async def start(ns: str, name: str) -> backends.Pod:
            async with slots:
                return await pods.start(ns, name, labels={layout.POD_LABEL: name},
                                        container_ports=layout.container_ports())
        started = await asyncio.gather(*(start(ns, name) for ns in LAYOUT.namespaces
                                         for name in LAYOUT.pods))
        by_key = {layout.key(p.namespace, p.name): p for p in started}
        probe = prober.Prober(timeout=1.0, retries=1)
        stack.push_async_callback(probe.close)
        await probe.start(started)
        yield World(cluster, pods, probe, by_key)
    if ENFORCED:
        print("\nenforcement times:", ", ".join(f"{c} {s:.2f}s" for c, s in ENFORCED))


def netpol(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"podSelector": {}, **spec}}


def pod_is(name: str) -> dict[str, Any]:
    return {"matchLabels": {layout.POD_LABEL: name}}


def ns_is(*names: str) -> dict[str, Any]:
    if len(names) == 1:
        return {"matchLabels": {"ns": names[0]}}
    return {"matchExpressions": [{"key": "ns", "operator": "In", "values": list(names)}]}


DENY_INGRESS = netpol("x", "deny-ingress", {"policyTypes": ["Ingress"]})
DENY_EGRESS = netpol("x", "deny-egress", {"policyTypes": ["Egress"]})
DENY_ALL = netpol("x", "deny-all", {"policyTypes": ["Ingress", "Egress"]})

# Each case: a name and the policies it sets; expectations come from the model.
STATIC_CASES: list[tuple[str, list[dict[str, Any]]]] = [
    ("no policy", []),
    ("deny ingress", [DENY_INGRESS]),
    ("deny egress", [DENY_EGRESS]),
    ("deny all", [DENY_ALL]),
    ("allow all ingress stacked on deny all", [
        DENY_ALL, netpol("x", "allow-all", {"ingress": [{}]})]),
    ("pod selector", [netpol("x", "a-from-b", {
        "podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]})]),
    ("namespace selector", [netpol("x", "a-from-y", {
        "podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]})]),
    ("match expressions", [netpol("x", "exprs", {
        "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn",
                                              "values": ["c"]}]},
        "ingress": [{"from": [{"namespaceSelector": ns_is("y", "z"),
                               "podSelector": {"matchExpressions": [
                                   {"key": "pod", "operator": "Exists"},
                                   {"key": "pod", "operator": "NotIn", "values": ["a"]}]}}]}]})]),
    ("namespace AND pod selector", [netpol("x", "and", {
        "podSelector": pod_is("a"),
        "ingress": [{"from": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")}]}]})]),
    ("namespace OR pod selector", [netpol("x", "or", {
        "podSelector": pod_is("a"),
        "ingress": [{"from": [{"namespaceSelector": ns_is("y")},
                              {"podSelector": pod_is("b")}]}]})]),
    ("empty selectors", [netpol("x", "same-ns", {
        "podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": {}}]}]}),
        netpol("y", "all-ns", {"podSelector": pod_is("a"),
                               "ingress": [{"from": [{"namespaceSelector": {}}]}]})]),
    ("ports", [netpol("x", "tcp-80", {"ingress": [{"ports": [{"port": 80}]}]})]),
    ("end port", [netpol("x", "tcp-80-81", {
        "ingress": [{"ports": [{"port": 80, "endPort": 81, "protocol": "TCP"}]}]})]),
    ("protocol only, UDP not opening TCP", [netpol("x", "udp", {
        "ingress": [{"ports": [{"protocol": "UDP"}]}]})]),
    ("named ports, ingress and egress", [
        netpol("x", "in-named", {"ingress": [{"ports": [{"port": "serve-81-udp",
                                                          "protocol": "UDP"}]}]}),
        netpol("y", "out-named", {"policyTypes": ["Egress"], "egress": [
            {"ports": [{"port": "serve-80-tcp"}]}]})]),
    ("egress-only and ingress-only on one pod", [
        netpol("x", "only-out", {"podSelector": pod_is("a"), "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"namespaceSelector": ns_is("y")}]}]}),
        netpol("x", "only-in", {"podSelector": pod_is("a"), "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"namespaceSelector": ns_is("z")}]}]})]),
    ("egress to namespace and port", [netpol("z", "out", {
        "egress": [{"to": [{"namespaceSelector": ns_is("x")}], "ports": [{"port": 81}]}]})]),
]


@pytest.mark.parametrize("case,policies", STATIC_CASES, ids=[c for c, _ in STATIC_CASES])
async def test_truth_table(world: World, case: str, policies: list[dict[str, Any]]) -> None:
    await world.enforced(case, world.apply(*policies))


async def test_ip_block_with_two_disjoint_excepts(world: World) -> None:
    ips = {k: p.ip for k, p in world.by_key.items()}
    # Every pod address is in 100.64.0.0/10 (the cluster's pool); two pods are cut out.
    policy = netpol("x", "cidr", {"podSelector": pod_is("a"), "ingress": [{"from": [{
        "ipBlock": {"cidr": "100.64.0.0/10",
                    "except": [f"{ips['y/b']}/32", f"{ips['z/c']}/32"]}}]}]})
    await world.enforced("ipBlock with two excepts", world.apply(policy))
    egress = netpol("y", "cidr-out", {"policyTypes": ["Egress"], "egress": [{"to": [{
        "ipBlock": {"cidr": "100.64.0.0/10", "except": [f"{ips['x/a']}/32",
                                                         f"{ips['x/c']}/32"]}}]}]})
    await world.enforced("egress ipBlock with two excepts", world.apply(policy, egress))


async def test_changes_are_enforced_without_rewriting_rules(world: World) -> None:
    store = world.store
    policy = netpol("x", "a-from-b", {"podSelector": pod_is("a"),
                                     "ingress": [{"from": [{"podSelector": pod_is("b")}]}]})
    await world.enforced("policy created", world.apply(policy))
    updated = netpol("x", "a-from-b", {"podSelector": pod_is("a"), "ingress": [{"from": [
        {"podSelector": pod_is("c")}]}]})
    await world.enforced("policy updated", world.apply(updated))

    knp = world.cluster.get(k8s.KURYR_NETWORK_POLICIES, "x", "a-from-b")
    assert knp is not None
    rules_before = {r["id"] for r in knp["status"]["securityGroupRules"]}

    def relabel(kind: k8s.Resource, namespace: str | None, name: str,
                labels: dict[str, str | None]) -> float:
        store.patch(kind, namespace, name, _labelled(labels))
        return time.monotonic()

    try:
        # A peer relabelled into the selector, then out of it.
        await world.enforced("peer relabelled into selector",
                             relabel(k8s.PODS, "x", "b", {"pod": "c"}))
        await world.enforced("peer relabelled out of selector",
                             relabel(k8s.PODS, "x", "b", {"pod": "b"}))
        # A target relabelled out of the policy's podSelector, then back.
        await world.enforced("target relabelled out", relabel(k8s.PODS, "x", "a", {"pod": "z"}))
        await world.enforced("target relabelled in", relabel(k8s.PODS, "x", "a", {"pod": "a"}))
        knp = world.cluster.get(k8s.KURYR_NETWORK_POLICIES, "x", "a-from-b")
        assert knp is not None
        assert {r["id"] for r in knp["status"]["securityGroupRules"]} == rules_before, \
            "pods joining and leaving a selector change address groups, not rules"
        # A namespace relabelled into a namespaceSelector.
        by_ns = netpol("x", "from-team", {"podSelector": pod_is("b"), "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})
        await world.enforced("namespace selector policy", world.apply(updated, by_ns))
        await world.enforced("namespace relabelled in",
                             relabel(k8s.NAMESPACES, None, "z", {"team": "blue"}))
        await world.enforced("namespace relabelled out",
                             relabel(k8s.NAMESPACES, None, "z", {"team": None}))
    finally:
        for namespace, name in (("x", "a"), ("x", "b")):
            relabel(k8s.PODS, namespace, name, {"pod": name})
        relabel(k8s.NAMESPACES, None, "z", {"team": None})
    await world.enforced("policies deleted", world.apply())


async def test_a_peer_pod_made_after_the_policy_is_allowed(world: World) -> None:
    policy = netpol("x", "from-late", {"podSelector": pod_is("a"), "ingress": [{"from": [
        {"namespaceSelector": ns_is("infra"), "podSelector": pod_is("late")}]}]})
    await world.enforced("policy before its peer", world.apply(policy))
    late = await world.pods.start("infra", "late", labels={layout.POD_LABEL: "late"},
                                  container_ports=layout.container_ports())
    other = await world.pods.start("infra", "other", labels={layout.POD_LABEL: "other"},
                                   container_ports=layout.container_ports())
    try:
        await world.probe.start([late, other])
        keys = [*LAYOUT.keys(), "infra/late", "infra/other"]
        await world.enforced("peer pod created after the policy", time.monotonic(), keys=keys)
    finally:
        for pod in (late, other):
            await world.pods.stop(pod)
        await world.probe.forget(["infra/late", "infra/other"])
    await world.enforced("policies deleted", world.apply())


async def test_policies_gone_leave_no_security_or_address_group(world: World) -> None:
    cluster = world.cluster
    await world.enforced("named and selector policies", world.apply(
        netpol("x", "p1", {"ingress": [{"from": [{"podSelector": pod_is("b")}],
                                        "ports": [{"port": "serve-80-tcp"}]}]}),
        netpol("y", "p2", {"policyTypes": ["Egress"], "egress": [
            {"to": [{"namespaceSelector": ns_is("z")}]}]})))
    knp = cluster.get(k8s.KURYR_NETWORK_POLICIES, "x", "p1")
    assert knp is not None
    assert knp["metadata"]["finalizers"] == ["kuryr.openstack.org/networkpolicy-finalizer"]
    assert knp["metadata"]["ownerReferences"][0]["kind"] == "NetworkPolicy"
    assert knp["spec"]["policyTypes"] == ["Ingress"]
    group_ids = set(knp["status"]["securityGroups"].values())
    assert knp["status"]["securityGroupId"] in group_ids
    assert knp["status"]["addressGroups"]
    vif = cluster.vif("x", "a")
    assert vif is not None
    port = await cluster.neutron.get_port(str(vif["port_id"]))
    assert group_ids & set(port.security_group_ids)
    await world.enforced("policies deleted", world.apply())

    async def released() -> bool:
        groups = await cluster.neutron.list_security_groups(tags=list(cluster.neutron.base_tags))
        left = [g for g in groups if g.name.startswith(f"kuryr-np-{cluster.cluster_id}")]
        address_groups = [g for g in await cluster.neutron.list_address_groups()
                          if g.name.startswith(f"kuryr-{cluster.cluster_id}-ag-")]
        return (not left and len(address_groups) == 1  # the nodes' group stays
                and not cluster.get(k8s.KURYR_NETWORK_POLICIES, "x", "p1"))
    await eventually(released, within=30, what="policy groups and address groups released")


async def test_the_node_reaches_isolated_pods(world: World) -> None:
    node = await world.pods.start("infra", "kubelet", labels={layout.POD_LABEL: "kubelet"},
                                  container_ports=layout.container_ports())
    try:
        await world.probe.start([node])
        since = world.apply(DENY_ALL)
        keys = [*LAYOUT.keys(), "infra/kubelet"]
        await world.enforced("deny all, before the node has the address", since, keys=keys)
        # The Node's InternalIP is that pod's address: it now stands for the kubelet.
        name = world.cluster.node

        def set_address(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["addresses"] = [{"type": "InternalIP",
                                                          "address": node.ip}]
            return obj
        world.store.patch(k8s.NODES, None, name, set_address, status=True)

        async def reaches() -> bool:
            found = await world.probe.probe("infra/kubelet", "x/a", 80, "TCP")
            return found.connected is True
        started = time.monotonic()
        await eventually(reaches, within=30, what="the node reaching a pod under deny all")
        print(f"node address: enforced in {time.monotonic() - started:.2f} s")
        other = await world.probe.probe("y/a", "x/a", 80, "TCP")
        assert other.connected is False, "only the node's address is let in"
    finally:
        world.store.patch(k8s.NODES, None, world.cluster.node,
                          lambda o: {**o, "status": {**o.get("status", {}), "addresses": []}},
                          status=True)
        await world.pods.stop(node)
        await world.probe.forget(["infra/kubelet"])
    await world.enforced("policies deleted", world.apply())


async def test_egress_to_a_service_vip_follows_its_endpoints(world: World) -> None:
    cluster = world.cluster
    ports = [{"name": "http", "port": 8080, "targetPort": 80, "protocol": "TCP"}]
    b_only = backends.create_service(cluster, "y", "web-b", ports=ports, selector=pod_is("b")
                                     ["matchLabels"])
    mixed = backends.create_service(cluster, "y", "web-all", ports=ports,
                                    selector={"ns-member": "y"})
    for pod in ("a", "b", "c"):
        world.store.patch(k8s.PODS, "y", pod, _labelled({"ns-member": "y"}))
    try:
        await backends.klb_ready(cluster, "y", "web-b", members=1)
        await backends.klb_ready(cluster, "y", "web-all", members=3)
        # x/a may reach y/b on 80 only: through web-b (every endpoint allowed), not web-all.
        since = world.apply(netpol("x", "to-b", {
            "podSelector": pod_is("a"), "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")}],
                        "ports": [{"port": 80}]}]}))
        await world.enforced("egress to one pod on one port", since)

        async def vip_answers(src: str, service: dict[str, Any]) -> bool:
            found = await world.probe.probe_address(src, backends.cluster_ip(service), 8080)
            return found is not None
        await eventually(lambda: vip_answers("x/a", b_only), within=60,
                         what="egress to web-b's VIP")
        print(f"service VIP: enforced in {time.monotonic() - since:.2f} s")
        assert not await vip_answers("x/a", mixed), \
            "web-all has endpoints the policy does not allow"
        assert await vip_answers("x/b", mixed), "x/b is not isolated"
        # A backend reaching itself through its Service's VIP (hairpin: the traffic comes
        # back from the VIP) while its namespace denies all ingress.
        world.apply(netpol("y", "deny", {"policyTypes": ["Ingress"]}))
        await world.enforced("deny ingress in y", time.monotonic())
        await eventually(lambda: vip_answers("y/b", b_only), within=60,
                         what="y/b reaching itself through its Service's VIP")
    finally:
        for pod in ("a", "b", "c"):
            world.store.patch(k8s.PODS, "y", pod, _labelled({"ns-member": None}))
        for name in ("web-b", "web-all"):
            world.store.delete(k8s.SERVICES, "y", name)
    await world.enforced("policies deleted", world.apply())


def _labelled(labels: dict[str, str | None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(obj: dict[str, Any]) -> dict[str, Any]:
        current = obj["metadata"].setdefault("labels", {})
        for key, value in labels.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return obj
    return apply


async def test_a_quota_error_is_reported_and_healed_when_the_quota_is_raised(
        world: World) -> None:
    """A policy whose security group Neutron refuses (the namespace's project has no room):
    an Event on the NetworkPolicy and a Failed condition on its KuryrNetworkPolicy; once the
    quota is raised, the policy is applied without anyone touching it."""
    cluster = world.cluster
    project = f"kt-q-{RUN_ID}-{uuid.uuid4().hex[:4]}"
    await cluster.neutron.update_quota(project, security_groups=0)
    cluster.api.store.create(k8s.NAMESPACES, None, {"metadata": {
        "name": "quota", "annotations": {"openstack.org/kuryr-project": project}}})
    try:
        world.apply(netpol("quota", "deny", {"policyTypes": ["Ingress"]}))

        def failed() -> dict[str, Any] | None:
            knp = cluster.get(k8s.KURYR_NETWORK_POLICIES, "quota", "deny")
            conditions = ((knp or {}).get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "Failed"), None)
        condition = await eventually(failed, within=30, what="a Failed condition")
        assert condition["reason"] == "QuotaExceededError", condition
        events = [e for e in cluster.api.store.list(k8s.EVENTS, "quota")[0]
                  if e["involvedObject"]["kind"] == "NetworkPolicy"]
        assert events and events[0]["reason"] == "QuotaExceededError"

        await cluster.neutron.update_quota(project, security_groups=10)

        def applied() -> bool:
            knp = cluster.get(k8s.KURYR_NETWORK_POLICIES, "quota", "deny")
            status = (knp or {}).get("status") or {}
            return bool(status.get("securityGroupId")) and not status.get("conditions")
        await eventually(applied, within=60, what="the policy applied once the quota allows")
    finally:
        world.apply()
        cluster.api.store.delete(k8s.NAMESPACES, None, "quota")
        await eventually(lambda: cluster.get(k8s.KURYR_NETWORK_POLICIES, "quota", "deny")
                         is None, within=30, what="the policy released")
        for group in await cluster.neutron.list_security_groups(project_id=project):
            await cluster.neutron.delete_security_group(group.id)


async def test_a_pooled_pod_under_a_deny_policy_is_never_open(
        cluster: Cluster, start_daemon: StartDaemon, cni_executable: pathlib.Path,
        make_netns: Callable[[], str]) -> None:
    """With a port pool, a pod created under a deny-ingress policy gets a pool port whose
    groups are the pod's before its VIF is written, so before CNI ADD answers: the very first
    probe after ADD is refused, and the port never had the allow-all group."""
    daemon = await asyncio.to_thread(start_daemon)
    pods = backends.Pods(cluster, daemon, cni_executable, make_netns)
    probe = prober.Prober(timeout=1.0, retries=0, tcp_ports=(80,), udp_ports=())
    async with running_controller(cluster, network_policy=True, pool_size=2, pool_batch=2):
        try:
            for namespace in ("p", "q"):
                cluster.create_namespace(namespace)
                await eventually(lambda ns=namespace: ((cluster.get(  # type: ignore[misc]
                    k8s.KURYR_NETWORKS, ns, ns) or {}).get("status") or {}).get("netId"),
                    what=f"network of {namespace}", within=60)
            cluster.create_node()
            await eventually(lambda: _pool_of(cluster, 2), within=60, what="the pool")
            pooled = {p.id for p in await cluster.pool_ports()}
            client = await pods.start("q", "client")
            cluster.api.store.create(k8s.NETWORK_POLICIES, "p",
                                     netpol("p", "deny", {"policyTypes": ["Ingress"]}))
            knp = await eventually(lambda: (cluster.get(
                k8s.KURYR_NETWORK_POLICIES, "p", "deny") or {}).get("status", {}).get(
                "securityGroupId"), within=30, what="the policy's group")
            target = await pods.start("p", "a", labels={"pod": "a"})
            await probe.start([client, target])
            first = await probe.probe(client, target, 80, "TCP")
            assert first.connected is False, "the first probe after ADD got through"
            vif = cluster.vif("p", "a")
            assert vif is not None
            port = await cluster.neutron.get_port(str(vif["port_id"]))
            assert port.id in pooled, "the pod was given a pool port"
            names = {g.id: g.name for g in await cluster.neutron.list_security_groups(
                tags=list(cluster.neutron.base_tags))}
            groups = {names.get(g, g) for g in port.security_group_ids}
            assert knp in port.security_group_ids
            assert not any(n.startswith("kuryr-allow-ingress") for n in groups), groups
            assert any(n.startswith("kuryr-allow-egress") for n in groups), groups
        finally:
            await probe.close()
            await pods.close()


async def _pool_of(cluster: Cluster, size: int) -> bool:
    return len(await cluster.pool_ports()) >= size


STREAM = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.3)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    s.send(b"stream")
    try:
        s.recv(200)
        print("ok", flush=True)
    except OSError:
        print("lost", flush=True)
    time.sleep(0.1)
"""


async def test_an_open_flow_is_cut_when_its_allow_goes(world: World) -> None:
    """One UDP flow (one socket, one conntrack entry) kept open from y/a to x/a while the
    policy that allowed it is replaced by one that does not: its next datagrams are dropped."""
    allow = netpol("x", "flow", {"podSelector": pod_is("a"), "ingress": [{
        "from": [{"namespaceSelector": ns_is("y"), "podSelector": pod_is("a")}]}]})
    await world.enforced("flow allowed", world.apply(allow))
    source, target = world.by_key["y/a"], world.by_key["x/a"]
    stream = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", source.netns, sys.executable, "-c", STREAM, target.ip, "81",
        "60", stdout=asyncio.subprocess.PIPE)
    assert stream.stdout is not None
    try:
        first = await asyncio.wait_for(stream.stdout.readline(), timeout=10)
        assert first.strip() == b"ok", first
        since = world.apply(netpol("x", "flow", {"podSelector": pod_is("a"),
                                                 "ingress": [{"from": [
                                                     {"podSelector": pod_is("b")}]}]}))
        lost = 0
        while lost < 10:  # ten datagrams in a row without an answer: cut
            line = await asyncio.wait_for(stream.stdout.readline(), timeout=10)
            assert line, "the stream ended before the flow was cut"
            lost = lost + 1 if line.strip() == b"lost" else 0
        print(f"open flow cut: {time.monotonic() - since:.2f} s after the change "
              "(ten lost datagrams later)")
    finally:
        if stream.returncode is None:
            stream.kill()
        await stream.wait()
    await world.enforced("policies deleted", world.apply())


async def test_gc_removes_groups_whose_policy_is_gone(world: World) -> None:
    """``kuryr gc``'s search (owners listed from the API): a security group tagged for a
    NetworkPolicy that no longer exists and an address group no KuryrNetworkPolicy names are
    orphans; the live policy's groups and the nodes' address group are not."""
    cluster = world.cluster
    neutron = cluster.neutron
    await world.enforced("a live policy", world.apply(netpol("x", "live", {
        "ingress": [{"from": [{"podSelector": pod_is("b")}]}]})))
    stale = await neutron.create_security_group(
        f"kuryr-np-{cluster.cluster_id}-x-gone", tags=[context.policy_tag(uuid.uuid4().hex)])
    unused = await neutron.create_address_group(f"kuryr-{cluster.cluster_id}-ag-{'0' * 20}")
    kube = await api.connect(cluster.config.kubernetes)
    try:
        orphans = await collecting.find_orphans(
            neutron, lambda: collecting.listed_owners(kube, cluster.cluster_id))
        assert {(o.kind, o.resource_id) for o in orphans} == {
            ("securitygroup", stale.id), ("addressgroup", unused.id)}, orphans
        assert await collecting.remove(neutron, orphans) == []
        again = await collecting.find_orphans(
            neutron, lambda: collecting.listed_owners(kube, cluster.cluster_id))
        assert again == []
    finally:
        await kube.close()
        await neutron.delete_security_group(stale.id)
        await neutron.delete_address_group(unused.id)
    await world.enforced("policies deleted", world.apply())
