"""NetworkPolicy at scale (a benchmark, not a test): what N pods and P policies cost in Neutron
with kuryr's translation (one security group per policy, rules naming address groups) next to
a one-rule-per-peer-pod translation (upstream kuryr-kubernetes'), and how long a policy change
and a pod label change take to be enforced in the data plane, median of several runs. Needs
root and the local cloud (``kuryr cloud up``).

    .venv/bin/python benchmarks/netpol.py [--pods 100] [--policies 20] [--runs 5]
                                          [--namespaces 5]

Set-up, before any clock: a Kubernetes API double, the controller in this process with
``network_policy`` on, a ``kuryr daemon --mode kubernetes``; ``--namespaces`` namespaces
(labelled ``ns: <name>``, ``team: blue`` or ``green`` by turns) sharing ``--pods`` pods, each
labelled ``app: a0..a4``, ``tier: front|back`` and ``pod: <name>``, plugged into network
namespaces three at a time (each CNI ADD holds a thread of the loop's default executor),
and one prober agent per pod serving TCP 80. Then P NetworkPolicies of five shapes in turn
(default-deny ingress; allow from the same app; allow TCP 80 from the ``team: blue``
namespaces; egress of the front tier to the back tier on TCP 80 and 8080 only; TCP 80 from an
ipBlock, the pod pool minus one namespace's subnet and one pod), spread over the namespaces;
the clock of that step stops when every KuryrNetworkPolicy has a ``status.securityGroupId``.

Counts: security groups, rules, address groups and their addresses, read back from Neutron
(the cluster's tags, the policy groups' ``kuryr-np-<cluster>-`` and the address groups'
``kuryr-<cluster>-ag-`` name prefixes), for the P policies alone. Against them, computed from
the same policies, pods and namespaces:

- "one rule per peer pod": for every rule of a direction in the policy's ``policyTypes``,
  ``max(1, len(ports))`` x (the pods each selector peer matches, summed over its peers, + the
  CIDRs each ``ipBlock`` leaves after its ``except``s, + 2, IPv4 and IPv6, when the rule has no
  peer at all). Every pod joining or leaving a selector adds or removes that many rules.
- "upstream as written" (kuryr-kubernetes' ``network_policy`` driver, last release): the
  same, except that a ``namespaceSelector`` alone is one rule per selected namespace (its
  subnet's CIDR), a ``podSelector: {}`` alone one (the namespace's CIDR), and
  ``namespaceSelector: {}`` alone two (pod pool and service subnet); an ``ipBlock`` is the
  sum, over its ``except``s, of the CIDRs each leaves of the block on its own; plus four
  rules every policy gets (ingress from the service subnet and from the nodes' subnet, and
  the allow-all pair of the direction its ``policyTypes`` lack). Upstream also made egress
  rules to Services' VIPs: there are no Services here.

Timings, each run (two more policies select one target pod T, chosen with the reference model
``tests.support.netpol.model`` so that the background policies neither allow a peer pod S in
its namespace nor stop S's egress to T:80): ``bench-t`` isolates T for ingress allowing
nothing, ``bench-clients`` allows ``role: client`` into T.
  a. at t0 ``bench-t`` is replaced by one allowing S by its ``pod`` label; then replaced back;
  b. at t0 S is labelled ``role: client``; then the label is removed.
From t0 S probes T:80 every 50 ms (one TCP connection each, 0.3 s timeout, no retry; several
in flight); the figure is the launch time of the first probe answered, or of the first of three
consecutive probes not answered. Between changes the controller is left one second. A run
during which Open vSwitch's ``ovs-vswitchd`` restarted (its pidfile changed: Open vSwitch 3.1.0's
userspace conntrack aborts now and then under connection churn, and the cloud's ``--monitor``
restarts it) is reported as affected and kept out of the median. The controller shares this
process's event loop with the prober's pipes, as in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import pathlib
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.k8s import backends  # noqa: E402
from tests.k8s.conftest import (  # noqa: E402
    UNREACHABLE_NEUTRON,
    Cluster,
    environ,
    eventually,
    making_cluster,
    metrics,
    running_controller,
)
from tests.support import cni, k8s  # noqa: E402
from tests.support.netpol import model, prober  # noqa: E402

from kuryr import settings  # noqa: E402
from kuryr.cli import install_cni  # noqa: E402
from kuryr.linux import namespaces as linux_namespaces  # noqa: E402
from kuryr.neutron import client, connecting  # noqa: E402

OVS_PIDFILE = pathlib.Path("/var/lib/kuryr/cloud/data/run/ovs/ovs-vswitchd.pid")
APPS = tuple(f"a{i}" for i in range(5))
TIERS = ("front", "back")
SHAPES = ("deny", "same-app", "from-team", "egress-tier", "ip-block")
PROBE_EVERY = 0.05
ENFORCE_WITHIN = 60.0
SETTLE = 1.0  # seconds the controller is left between two timed changes
CHANGES = ("policy: S allowed", "policy: S denied again", "label: S into selector",
           "label: S out of selector")


# --- the cluster's objects ---------------------------------------------------------------

def layout(pods: int, namespaces: int) -> dict[str, list[str]]:
    """Pod names by namespace: ``n<k>`` x ``n<k>-p<j>``, pods dealt round the namespaces."""
    names = [f"n{k}" for k in range(max(1, min(namespaces, pods)))]
    found: dict[str, list[str]] = {ns: [] for ns in names}
    for i in range(pods):
        ns = names[i % len(names)]
        found[ns].append(f"{ns}-p{len(found[ns]):02d}")
    return found


def pod_labels(name: str, j: int) -> dict[str, str]:
    return {"app": APPS[j % len(APPS)], "tier": TIERS[j % len(TIERS)], "pod": name}


def netpol(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": name},
            "spec": {"podSelector": {}, **spec}}


def labelled(key: str, value: str) -> dict[str, Any]:
    return {"matchLabels": {key: value}}


def background(count: int, namespaces: list[str], *, pool: str, subnets: dict[str, str],
               ips: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The P policies: shape ``i % 5``, namespace shifted by one every five policies (so a
    namespace gets each shape at most once for P <= 5 x namespaces)."""
    made = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        k = (i + i // len(SHAPES)) % len(namespaces)
        namespace = namespaces[k]
        app = APPS[(i // len(SHAPES)) % len(APPS)]
        tcp = [{"protocol": "TCP", "port": 80}]
        if shape == "deny":
            spec: dict[str, Any] = {"policyTypes": ["Ingress"]}
        elif shape == "same-app":
            spec = {"podSelector": labelled("app", app),
                    "ingress": [{"from": [{"podSelector": labelled("app", app)}]}]}
        elif shape == "from-team":
            spec = {"podSelector": labelled("tier", "back"),
                    "ingress": [{"from": [{"namespaceSelector": labelled("team", "blue")}],
                                 "ports": tcp}]}
        elif shape == "egress-tier":
            spec = {"podSelector": labelled("tier", "front"), "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": labelled("tier", "back")}],
                                "ports": [*tcp, {"protocol": "TCP", "port": 8080}]}]}
        else:
            other = namespaces[(k + 1) % len(namespaces)]
            third = namespaces[(k + 2) % len(namespaces)]
            excepts = sorted({subnets[other], f"{ips[third][0]}/32"})
            spec = {"podSelector": labelled("app", app),
                    "ingress": [{"from": [{"ipBlock": {"cidr": pool, "except": excepts}}],
                                 "ports": tcp}]}
        made.append(netpol(namespace, f"{shape}-{i:02d}", spec))
    return made


def bench_deny(namespace: str, target: str) -> dict[str, Any]:
    return netpol(namespace, "bench-t", {"podSelector": labelled("pod", target),
                                         "policyTypes": ["Ingress"]})


def bench_allow(namespace: str, target: str, peer: str) -> dict[str, Any]:
    return netpol(namespace, "bench-t", {"podSelector": labelled("pod", target), "ingress": [
        {"from": [{"podSelector": labelled("pod", peer)}],
         "ports": [{"protocol": "TCP", "port": 80}]}]})


def bench_clients(namespace: str, target: str) -> dict[str, Any]:
    return netpol(namespace, "bench-clients", {"podSelector": labelled("pod", target),
                                               "ingress": [{"from": [{"podSelector": labelled(
                                                   "role", "client")}]}]})


def choose_pair(namespaces: list[dict[str, Any]], pods: list[dict[str, Any]],
                policies: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(T, S): pods of one namespace such that, by the reference model, S reaches T:80 with
    ``bench-t`` allowing S, and with S labelled ``role: client``, and not otherwise. Raises
    LookupError when no pair is."""
    for target in pods:
        namespace, t = target["metadata"]["namespace"], target["metadata"]["name"]
        clients = bench_clients(namespace, t)
        denying = model.Cluster(namespaces, pods, [*policies, bench_deny(namespace, t),
                                                   clients])
        for peer in pods:
            s = peer["metadata"]["name"]
            if peer["metadata"]["namespace"] != namespace or s == t:
                continue
            # A pod given as a dict is taken as it is: S with the label it will get.
            client = {**peer, "metadata": {**peer["metadata"], "labels": {
                **peer["metadata"]["labels"], "role": "client"}}}
            if (denying.allowed(peer, target, 80) or not denying.allowed(client, target, 80)
                    or not model.Cluster(namespaces, pods, [
                        *policies, bench_allow(namespace, t, s), clients]).allowed(
                        peer, target, 80)):
                continue
            return target, peer
    raise LookupError("no pod pair the background policies leave to the benchmark's own")


# --- counts ------------------------------------------------------------------------------

def difference(cidr: str, excepts: list[str]) -> list[ipaddress.IPv4Network]:
    remaining = [ipaddress.IPv4Network(cidr, strict=False)]
    for text in excepts:
        cut = ipaddress.IPv4Network(text, strict=False)
        kept: list[ipaddress.IPv4Network] = []
        for net in remaining:
            if not net.overlaps(cut):
                kept.append(net)
            elif not net.subnet_of(cut):
                kept.extend(net.address_exclude(cut))
        remaining = kept
    return list(ipaddress.collapse_addresses(remaining))


def peer_rules(peer: dict[str, Any], namespace: str, pods: list[dict[str, Any]],
               labels_of: dict[str, dict[str, str]]) -> tuple[int, int]:
    """Rules per port for one peer: (one rule per peer pod, upstream as written)."""
    block = peer.get("ipBlock")
    if block:
        excepts = list(block.get("except") or [])
        exact = len(difference(block["cidr"], excepts))
        upstream = sum(len(difference(block["cidr"], [e])) for e in excepts) or 1
        return exact, upstream
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    chosen = {ns for ns, labels in labels_of.items()
              if (model.selects(ns_selector, labels) if ns_selector is not None
                  else ns == namespace)}
    matched = sum(1 for p in pods if p["metadata"]["namespace"] in chosen
                  and model.selects(pod_selector or {}, p["metadata"].get("labels") or {}))
    if pod_selector:  # a non-empty podSelector: the pods' addresses, upstream too
        return matched, matched
    if ns_selector == {}:
        return matched, 2
    return matched, len(chosen) if ns_selector is not None else 1


def per_peer_counts(namespaces: list[dict[str, Any]], pods: list[dict[str, Any]],
                    policies: list[dict[str, Any]]) -> tuple[int, int]:
    """Rules of the P policies: (one rule per peer pod, upstream as written)."""
    labels_of = {ns["metadata"]["name"]: {**(ns["metadata"].get("labels") or {}),
                                          model.NAME_LABEL: ns["metadata"]["name"]}
                 for ns in namespaces}
    per_pod = upstream = 0
    for policy in policies:
        spec = policy.get("spec") or {}
        namespace = policy["metadata"]["namespace"]
        types = model.policy_types(policy)
        upstream += 2  # ingress from the service subnet and from the nodes' subnet
        for direction, key in (("Ingress", "from"), ("Egress", "to")):
            if direction not in types:
                upstream += 2  # upstream's allow-all pair for an unrestricted direction
                continue
            for rule in spec.get(direction.lower()) or []:
                ports = len(rule.get("ports") or []) or 1
                peers = rule.get(key) or []
                if not peers:
                    per_pod += 2 * ports
                    upstream += 2 * ports
                for peer in peers:
                    exact, written = peer_rules(peer, namespace, pods, labels_of)
                    per_pod += exact * ports
                    upstream += written * ports
    return per_pod, upstream


async def neutron_counts(cluster: Cluster) -> dict[str, int]:
    neutron = cluster.neutron
    groups = await neutron.list_security_groups(tags=list(neutron.base_tags))
    policy_prefix = f"kuryr-np-{cluster.cluster_id}-"
    found = collections.Counter[str]()
    for group in groups:
        kind = "policy" if group.name.startswith(policy_prefix) else "cluster"
        found[f"{kind} groups"] += 1
        rules = await neutron.list_security_group_rules(security_group_id=group.id)
        found[f"{kind} rules"] += len(rules)
        found[f"{kind} rules naming an address group"] += sum(
            1 for r in rules if r.remote_address_group_id)
    prefix = f"kuryr-{cluster.cluster_id}-ag-"
    for address_group in await neutron.list_address_groups():
        if address_group.name.startswith(prefix):
            found["address groups"] += 1
            found["addresses"] += len(address_group.addresses)
    return dict(found)


async def neutron_calls(cluster: Cluster) -> dict[str, float]:
    samples = await metrics(cluster)
    calls: dict[str, float] = collections.defaultdict(float)
    for (name, labels), value in samples.items():
        if name == "kuryr_neutron_calls_total":
            calls[dict(labels)["operation"]] += value
    return calls


async def failed_reconciles(cluster: Cluster) -> dict[str, int]:
    samples = await metrics(cluster)
    return {f"{dict(labels)['kind']} {dict(labels)['result']}": int(value)
            for (name, labels), value in samples.items()
            if name == "kuryr_reconciles_total" and value
            and dict(labels)["result"] not in ("ok", "requeued")}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items())
            if v - before.get(k, 0) > 0}


# --- the data plane ----------------------------------------------------------------------

class OvsWatch:
    """The moments ``ovs-vswitchd``'s pid changed, polled every 0.2 s."""

    def __init__(self) -> None:
        self.restarts: list[tuple[float, str, str]] = []
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def pid() -> str:
        try:
            return OVS_PIDFILE.read_text().strip()
        except OSError:
            return "?"

    async def _poll(self) -> None:
        last = self.pid()
        while True:
            await asyncio.sleep(0.2)
            now = self.pid()
            if now != last:
                self.restarts.append((time.monotonic(), last, now))
                last = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[tuple[float, str, str]]:
        return [r for r in self.restarts if start <= r[0] <= end]


async def watch(probe: prober.Prober, src: str, dst: str, *, want: bool, since: float,
                streak: int = 1, within: float = ENFORCE_WITHIN) -> float | None:
    """Seconds from ``since`` to the launch of the first of ``streak`` consecutive probes
    (in launch order) src -> dst:80 whose verdict is ``want`` (an unknown verdict breaks a
    streak); None if not seen within ``within``. Raises ProbeError if an agent died."""
    launched: list[tuple[float, asyncio.Task[prober.Result]]] = []
    judged, run, first = 0, 0, 0.0
    try:
        while time.monotonic() - since < within:
            launched.append((time.monotonic(),
                             asyncio.create_task(probe.probe(src, dst, 80, "TCP"))))
            while judged < len(launched) and launched[judged][1].done():
                at, task = launched[judged]
                judged += 1
                if task.result().connected is want:
                    first = first if run else at
                    run += 1
                    if run >= streak:
                        return first - since
                else:
                    run = 0
            await asyncio.sleep(PROBE_EVERY)
        return None
    finally:
        await asyncio.gather(*(t for _, t in launched), return_exceptions=True)


class LogCount(logging.Handler):
    """Counts WARNING and above by logger; keeps the first few distinct messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts = collections.Counter[str]()
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}"
        self.counts[key] += 1
        text = record.getMessage().splitlines()[0][:160]
        if len(self.first) < 12 and text not in self.first.values():
            self.first[f"{key} #{self.counts[key]}"] = text


# --- the run -----------------------------------------------------------------------------

async def run(args: argparse.Namespace, command: str) -> None:
    began = time.monotonic()
    config = settings.load(environ={})
    work = pathlib.Path(tempfile.mkdtemp(prefix="kuryr-bench-netpol-"))
    logging.getLogger().setLevel(logging.INFO)
    file_log = logging.FileHandler(work / "controller.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    counted = LogCount()
    for handler in (file_log, counted):
        logging.getLogger().addHandler(handler)
    executable = install_cni.install_executable(work / "bin")
    ovs = OvsWatch()
    steps: dict[str, float] = {}
    made_netns: list[str] = []

    def make_netns() -> str:
        name = f"kb-{uuid.uuid4().hex[:8]}"
        linux_namespaces.create(name)
        made_netns.append(name)
        return name

    def mark(step: str, since: float) -> None:
        steps[step] = time.monotonic() - since
        print(f"{step}: {steps[step]:.1f} s", flush=True)

    print(f"work dir (controller.log, daemon log): {work}", flush=True)
    ovs.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(ovs.stop)
        stack.callback(remove_netns, made_netns)
        made_cluster: list[str] = []
        # After the cluster's teardown (which removes its security groups, hence the rules
        # naming its address groups, but not the address groups: they carry no tags).
        stack.push_async_callback(remove_address_groups, config, made_cluster)
        cluster = await stack.enter_async_context(making_cluster(config, with_services=True))
        made_cluster.append(cluster.cluster_id)
        store = cluster.api.store
        env = {**environ(cluster), **UNREACHABLE_NEUTRON, "KURYR_BINDING_HOST": cluster.node}
        (work / "daemon").mkdir()
        daemon = cni.DaemonProcess(work / "daemon", config_file=None, env=env,
                                   mode="kubernetes")
        daemon.start()
        stack.callback(daemon.stop)
        await stack.enter_async_context(running_controller(cluster, network_policy=True))
        pods = backends.Pods(cluster, daemon, executable, make_netns)
        stack.push_async_callback(pods.close)
        probe = prober.Prober(timeout=0.3, retries=0, tcp_ports=(80,), udp_ports=())
        stack.push_async_callback(probe.close)

        # Namespaces and pods.
        started = time.monotonic()
        by_namespace = layout(args.pods, args.namespaces)
        names = list(by_namespace)
        for k, namespace in enumerate(names):
            store.create(k8s.NAMESPACES, None, {"metadata": {"name": namespace, "labels": {
                "ns": namespace, "team": ("blue", "green")[k % 2]}}})
        for namespace in names:
            await eventually(lambda ns=namespace: ((cluster.get(  # type: ignore[misc]
                k8s.KURYR_NETWORKS, ns, ns) or {}).get("status") or {}).get("netId"),
                what=f"network of {namespace}", within=120)
        mark(f"{len(names)} namespaces' networks", started)
        started = time.monotonic()
        slots = asyncio.Semaphore(3)
        done = [0]

        async def start(namespace: str, j: int, name: str) -> backends.Pod:
            async with slots:
                pod = await pods.start(namespace, name, labels=pod_labels(name, j))
            done[0] += 1
            if done[0] % 20 == 0:
                print(f"  {done[0]} pods plugged, {time.monotonic() - started:.0f} s",
                      flush=True)
            return pod
        plugged = await asyncio.gather(*(start(ns, j, name) for ns in names
                                         for j, name in enumerate(by_namespace[ns])))
        mark(f"{len(plugged)} pods plugged (CNI ADD, 3 at a time)", started)
        started = time.monotonic()
        await probe.start(plugged)
        mark(f"{len(plugged)} agents serving TCP 80", started)

        # The P policies.
        pool = (await cluster.neutron.get_subnet_pool(
            str(cluster.config.kubernetes.pod_subnet_pool))).prefixes[0]
        subnets = {ns: str((cluster.get(k8s.KURYR_NETWORKS, ns, ns) or {})["status"]
                           ["subnetCIDR"]) for ns in names}
        ips: dict[str, list[str]] = collections.defaultdict(list)
        for pod in plugged:
            ips[pod.namespace].append(pod.ip)
        policies = background(args.policies, names, pool=pool, subnets=subnets, ips=ips)
        before = await neutron_calls(cluster)
        started = time.monotonic()
        for policy in policies:
            store.create(k8s.NETWORK_POLICIES, policy["metadata"]["namespace"], policy)
        await knps_ready(cluster, policies)
        mark(f"{len(policies)} policies -> every KuryrNetworkPolicy with a security group",
             started)
        policy_calls = delta(await neutron_calls(cluster), before)
        ns_objects = store.list(k8s.NAMESPACES, None)[0]
        pod_objects = [p for p in store.list(k8s.PODS, None)[0]]
        per_pod, upstream = per_peer_counts(ns_objects, pod_objects, policies)
        # Let the pods' ports take their groups and the address groups fill before counting.
        await asyncio.sleep(3)
        counts = await neutron_counts(cluster)

        # The target and its peer.
        target, peer = choose_pair(ns_objects, pod_objects, policies)
        namespace, t, s = (target["metadata"]["namespace"], target["metadata"]["name"],
                           peer["metadata"]["name"])
        t_key, s_key = f"{namespace}/{t}", f"{namespace}/{s}"
        print(f"target T = {t_key} ({target['metadata']['labels']}), peer S = {s_key} "
              f"({peer['metadata']['labels']})", flush=True)
        deny, allow = bench_deny(namespace, t), bench_allow(namespace, t, s)
        for policy in (deny, bench_clients(namespace, t)):
            store.create(k8s.NETWORK_POLICIES, namespace, policy)
        await knps_ready(cluster, [deny])

        def replace(policy: dict[str, Any]) -> float:
            now = time.monotonic()
            current = store.get(k8s.NETWORK_POLICIES, namespace, "bench-t")
            store.replace(k8s.NETWORK_POLICIES, namespace, "bench-t",
                          {**policy, "metadata": current["metadata"]})
            return now

        def relabel(role: str | None) -> float:
            def apply(obj: dict[str, Any]) -> dict[str, Any]:
                labels = obj["metadata"].setdefault("labels", {})
                if role is None:
                    labels.pop("role", None)
                else:
                    labels["role"] = role
                return obj
            now = time.monotonic()
            store.patch(k8s.PODS, namespace, s, apply)
            return now

        settled = await watch(probe, s_key, t_key, want=False, streak=3,
                              since=time.monotonic(), within=120)
        if settled is None:
            raise RuntimeError(f"{s_key} -> {t_key}:80 never denied under bench-t")

        timings: dict[str, list[tuple[float | None, bool]]] = {c: [] for c in CHANGES}
        calls_run1: dict[str, dict[str, int]] = {}
        for i in range(args.runs):
            plan: list[tuple[str, Callable[[], float], bool]] = [
                (CHANGES[0], lambda: replace(allow), True),
                (CHANGES[1], lambda: replace(deny), False),
                (CHANGES[2], lambda: relabel("client"), True),
                (CHANGES[3], lambda: relabel(None), False)]
            said = []
            for change, act, want in plan:
                await asyncio.sleep(SETTLE)
                calls_before = await neutron_calls(cluster) if i == 0 else {}
                t0 = act()
                took = await watch(probe, s_key, t_key, want=want, since=t0,
                                   streak=1 if want else 3)
                affected = bool(ovs.between(t0 - 2.0, time.monotonic()))
                timings[change].append((took, affected))
                if i == 0:
                    # Lets the controller finish the change's last calls (status, cleanup).
                    await asyncio.sleep(SETTLE)
                    calls_run1[change] = delta(await neutron_calls(cluster), calls_before)
                said.append(f"{change} {'timeout' if took is None else f'{took:.2f} s'}"
                            f"{' (ovs-vswitchd restarted)' if affected else ''}")
            print(f"run {i + 1}: " + "; ".join(said), flush=True)
        errors = await failed_reconciles(cluster)
        final_counts = await neutron_counts(cluster)

    report(args, command, steps=steps, counts=counts, final_counts=final_counts,
           per_pod=per_pod, upstream=upstream, timings=timings, policy_calls=policy_calls,
           calls_run1=calls_run1, errors=errors, ovs=ovs, logs=counted,
           total=time.monotonic() - began, pair=(t_key, s_key))


async def remove_address_groups(config: settings.KuryrSettings, cluster_ids: list[str]
                                ) -> None:
    """Delete the address groups of these clusters (found by name)."""
    if not cluster_ids:
        return
    neutron = client.Neutron(connecting.connect(config.neutron), cluster_id=cluster_ids[0])
    try:
        prefixes = tuple(f"kuryr-{c}-ag-" for c in cluster_ids)
        for group in await neutron.list_address_groups():
            if group.name.startswith(prefixes):
                await neutron.delete_address_group(group.id)
    except Exception as e:  # reported, not raised: it would hide the run's own error
        print(f"address groups of {cluster_ids} not all removed: {e!r}", file=sys.stderr)
    finally:
        neutron.close()


def remove_netns(names: list[str]) -> None:
    for name in names:
        linux_namespaces.remove(name)


async def knps_ready(cluster: Cluster, policies: list[dict[str, Any]]) -> None:
    def ready() -> bool:
        return all(((cluster.get(k8s.KURYR_NETWORK_POLICIES, p["metadata"]["namespace"],
                                 p["metadata"]["name"]) or {}).get("status") or {})
                   .get("securityGroupId") for p in policies)
    await eventually(ready, within=300, what="every KuryrNetworkPolicy with a security group")


def report(args: argparse.Namespace, command: str, *, steps: dict[str, float],
           counts: dict[str, int], final_counts: dict[str, int], per_pod: int, upstream: int,
           timings: dict[str, list[tuple[float | None, bool]]],
           policy_calls: dict[str, int], calls_run1: dict[str, dict[str, int]],
           errors: dict[str, int], ovs: OvsWatch, logs: LogCount, total: float,
           pair: tuple[str, str]) -> None:
    print()
    print(f"NetworkPolicy at scale: {args.pods} pods in {min(args.namespaces, args.pods)} "
          f"namespaces, {args.policies} policies, {args.runs} runs, {os.cpu_count()} cores")
    print(f"command: {command}")
    print(f"whole run (set-up, runs, teardown): {total:.0f} s")
    print()
    print("set-up")
    for step, seconds in steps.items():
        print(f"  {step:<70} {seconds:7.1f} s")
    print()
    print(f"Neutron, for the {args.policies} policies            kuryr   one rule per peer pod"
          "   upstream as written")
    print(f"  security groups (one per policy)            {counts.get('policy groups', 0):6}"
          f"   {args.policies:21}   {args.policies:19}")
    print(f"  rules in them                               {counts.get('policy rules', 0):6}"
          f"   {per_pod:21}   {upstream:19}")
    print(f"    of which naming an address group          "
          f"{counts.get('policy rules naming an address group', 0):6}")
    print(f"  address groups (addresses in them)          {counts.get('address groups', 0):6}"
          f" ({counts.get('addresses', 0)} addresses)")
    print(f"  cluster-wide groups (allow-all x2, services) {counts.get('cluster groups', 0):5}"
          f" with {counts.get('cluster rules', 0)} rules")
    print(f"  Neutron calls making the {args.policies} policies: "
          f"{sum(policy_calls.values())} ({policy_calls})")
    print()
    print(f"enforcement, S -> T:80 ({pair[1]} -> {pair[0]}), probe every "
          f"{PROBE_EVERY * 1000:.0f} ms")
    print(f"  {'change':<40} {'median':>7} {'min':>6} {'max':>6}   runs  excluded")
    for change, values in timings.items():
        kept = [v for v, hit in values if v is not None and not hit]
        affected = sum(1 for v, hit in values if hit)
        lost = sum(1 for v, hit in values if v is None and not hit)
        note = ", ".join(x for x in (f"{affected} ovs restart" if affected else "",
                                     f"{lost} timeout" if lost else "") if x) or "-"
        if kept:
            print(f"  {change:<40} {statistics.median(kept):6.2f}s {min(kept):5.2f}s "
                  f"{max(kept):5.2f}s   {len(kept):4}  {note}")
        else:
            print(f"  {change:<40} {'-':>7} {'-':>6} {'-':>6}   {0:4}  {note}")
        all_runs = " ".join("timeout" if v is None else f"{v:.2f}" + ("*" if hit else "")
                            for v, hit in values)
        print(f"  {'':<40} runs: {all_runs}")
    print("  (* ovs-vswitchd restarted during that measurement: not in the median)")
    print()
    print("Neutron calls per change (run 1):")
    for change, calls in calls_run1.items():
        print(f"  {change:<40} {sum(calls.values()):3}  {calls}")
    print()
    print(f"ovs-vswitchd restarts seen: {len(ovs.restarts)}")
    print(f"failed reconciles (kind result: count): {errors or 'none'}")
    print(f"controller warnings and errors: {dict(logs.counts) or 'none'}")
    for key, text in logs.first.items():
        print(f"  {key}: {text}")
    if final_counts != counts:
        print(f"Neutron after the runs (bench-t and bench-clients too): {final_counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--namespaces", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, OVS) and the local cloud (kuryr cloud up)")
    if args.pods < 2 or args.policies < 0 or args.runs < 1:
        sys.exit("needs --pods >= 2, --policies >= 0, --runs >= 1")
    command = shlex.join([sys.executable, *sys.argv])
    asyncio.run(run(args, command))


if __name__ == "__main__":
    main()
