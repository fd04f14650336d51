"""Pod start at scale on Kubernetes (a benchmark, not a test): the time from creating N pods
(50 by default) to all N CNI ADDs done, with the controller's port pool and without, next to
upstream kuryr-kubernetes' published figure and to the reference ``bridge`` + ``host-local``
plugins doing the same N ADDs side by side. Needs root and the local cloud (``kuryr cloud
up``).

    .venv/bin/python benchmarks/pods.py [--pods 50] [--runs 3]

Each run: a fresh Kubernetes API double (the tests' stand-in for a kube-apiserver), a
``kuryr controller`` and a ``kuryr daemon --mode kubernetes`` subprocess, one Node and one
namespace whose network exists before the clock starts. At t0 the N pods are created and, as
kubelets do once the sandboxes exist, the N CNI ADDs are started at once, each into its own
network namespace. The clock stops when the last ADD has answered. For each pod the moments
its KuryrPort got a VIF and the VIF turned active are recorded, which says where the time goes;
the controller's ``/metrics`` give the Neutron calls made in the window, per pod and by
operation, split at the moment the last VIF was written (a pod's hot path ends with its VIF:
the daemon in Kubernetes mode calls no Neutron), and its pool takes (hit or miss).

Upstream's figure (kuryr-kubernetes, 2017, "50 pods Running"): 103 s with port pools, 225 s
without. Theirs counts from ``kubectl run`` to all pods Running on a real cluster, so it also
includes scheduling and image pulls that this run does not have: compare orders of magnitude.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.k8s.conftest import eventually  # noqa: E402
from tests.runtimes.conftest import REFERENCE_PLUGINS  # noqa: E402
from tests.support import cni, k8s, processes  # noqa: E402

from kuryr import settings  # noqa: E402
from kuryr.cli import install_cni  # noqa: E402
from kuryr.controller import networks  # noqa: E402
from kuryr.linux import namespaces  # noqa: E402
from kuryr.neutron import client, connecting  # noqa: E402
from kuryr.pools import nodes  # noqa: E402

# One ADD as a runtime makes it: configuration, extra environment, container id, netns path.
Job = tuple[dict[str, Any], dict[str, str], str, str]
UPSTREAM = {"pooled": 103.0, "cold": 225.0}
NODE = "vm"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def neutron_calls(health_port: int) -> dict[str, float]:
    """The controller's Neutron call counters, by operation, and its pool takes (as
    ``pool hit`` and ``pool miss``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    calls: dict[str, float] = {}
    for match in re.finditer(r'^kuryr_neutron_calls_total\{operation="([^"]+)",result="[^"]+"\}'
                             r" ([0-9.e+]+)$", text, re.M):
        calls[match[1]] = calls.get(match[1], 0) + float(match[2])
    for match in re.finditer(r'^kuryr_pool_takes_total\{result="([^"]+)"\} ([0-9.e+]+)$', text,
                             re.M):
        calls[f"pool {match[1]}"] = float(match[2])
    return calls


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {op: int(n - before.get(op, 0)) for op, n in after.items() if n - before.get(op, 0)}


def parallel_adds(executable: pathlib.Path, configs: list[Job]) -> list[float]:
    """Start every ADD at once; the moment (perf_counter) each answered. Fails on an error."""
    def one(conf: dict[str, Any], env: dict[str, str], cid: str, netns: str) -> float:
        rc, out = cni.invoke(executable, "ADD", conf, container_id=cid, netns=netns, env=env,
                             timeout=600)
        if rc != 0:
            raise SystemExit(f"ADD {cid[:12]} failed: {out}")
        return time.perf_counter()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(configs)) as pool:
        return list(pool.map(lambda c: one(*c), configs))


def start_controller(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "kuryr", "controller"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def bridge_run(bin_dir: pathlib.Path, work: pathlib.Path, count: int) -> float:
    """N parallel ADDs of the reference bridge plugin, then their DELs: seconds to all ADDs."""
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "kb-bridge", "type": "bridge", "bridge": "kbp-br0",
        "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.247.0.0/22",
                                    "dataDir": str(work / "ipam")}}
    names = [f"kbp-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        namespaces.create(name)
    try:
        jobs: list[Job] = [(conf, {}, uuid.uuid4().hex, f"/run/netns/{n}") for n in names]
        started = time.perf_counter()
        done = parallel_adds(bin_dir / "bridge", jobs)
        elapsed = max(done) - started
        for c, _, cid, netns in jobs:
            cni.invoke(bin_dir / "bridge", "DEL", c, container_id=cid, netns=netns)
        return elapsed
    finally:
        for name in names:
            namespaces.remove(name)
        subprocess.run(["ip", "link", "del", "kbp-br0"], capture_output=True)


async def kuryr_run(config: settings.KuryrSettings, executable: pathlib.Path,
                    work: pathlib.Path, count: int, *, pooled: bool) -> dict[str, Any]:
    cluster_id = f"kb{uuid.uuid4().hex[:6]}"
    neutron = client.Neutron(connecting.connect(config.neutron), cluster_id=cluster_id)
    n = uuid.uuid4().int % 64
    subnet_pool = await neutron.create_subnet_pool(
        f"kb-{cluster_id}", prefixes=[f"100.{64 + n}.0.0/16"], default_prefix_length=24,
        tags=["kuryr-bench=1"])
    router = await neutron.create_router(f"kb-{cluster_id}", tags=["kuryr-bench=1"])
    controller: subprocess.Popen[bytes] | None = None
    netns_names = [f"kbp-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    resources = [*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES]
    try:
        async with k8s.serve(resources=resources, namespaces=(), bookmark_interval=5) as api:
            health = cni.free_port()
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
                   "KURYR_CLUSTER_ID": cluster_id, "KURYR_KUBERNETES_API_ROOT": api.url,
                   "KURYR_KUBERNETES_LEADER_ELECTION": "false", "KURYR_BINDING_HOST": NODE}
            if config.source:
                env["KURYR_CONFIG"] = config.source
            controller_env = {
                **env, "KURYR_KUBERNETES_POD_SUBNET_POOL": subnet_pool.id,
                "KURYR_KUBERNETES_POD_ROUTER": router.id,
                "KURYR_KUBERNETES_PORT_ACTIVE_POLL": "0.2",
                "KURYR_KUBERNETES_HEALTH_PORT": str(health),
                "KURYR_KUBERNETES_POOL_SIZE": str(count if pooled else 0),
                "KURYR_KUBERNETES_POOL_BATCH": str(min(count, 25))}
            controller = start_controller(controller_env, work / f"controller-{cluster_id}.log")
            daemon_dir = work / cluster_id
            daemon_dir.mkdir()
            daemon = cni.DaemonProcess(daemon_dir, config_file=config.source, env={
                **env, "KURYR_CNI_DAEMON_MODE": "kubernetes"})
            store = api.store
            store.create(k8s.NODES, None, {"metadata": {"name": NODE}})
            store.create(k8s.NAMESPACES, None, {"metadata": {"name": "bench"}})
            await eventually(lambda: _status(store, "bench").get("netId"), within=120,
                             what="namespace network")
            if pooled:
                await eventually(lambda: _pool_ready(neutron, count), within=300,
                                 what=f"{count} pool ports")
            await asyncio.to_thread(daemon.start)
            if pooled:  # as on a node that has run for a while: the pool ports plugged ahead
                for _ in range(900):  # at most 180 s
                    if _plugged_ahead(daemon.log) >= count:
                        break
                    await asyncio.sleep(0.2)
                print(f"    (pool ports plugged ahead by the daemon before t0: "
                      f"{_plugged_ahead(daemon.log)} of {count})")
            try:
                for name in netns_names:
                    namespaces.create(name)
                conf = cni.kubernetes_netconf(daemon.socket)
                before = neutron_calls(health)
                started = time.perf_counter()
                jobs: list[Job] = []
                for i, netns in enumerate(netns_names):
                    pod = store.create(k8s.PODS, "bench", {
                        "metadata": {"name": f"p{i}"},
                        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "i"}]}})
                    cid = uuid.uuid4().hex
                    args = cni.pod_args("bench", f"p{i}", pod["metadata"]["uid"], cid)
                    jobs.append((conf, {"CNI_ARGS": args}, cid, f"/run/netns/{netns}"))
                seen: dict[str, dict[str, float]] = {"vif": {}, "active": {}}
                at_vifs: dict[str, float] = {}
                watcher = asyncio.create_task(_watch_vifs(store, seen, count=count,
                                                          health_port=health, at_vifs=at_vifs))
                done = await asyncio.to_thread(parallel_adds, executable, jobs)
                watcher.cancel()
                after = neutron_calls(health)
                for c, e, cid, netns in jobs:
                    cni.invoke(executable, "DEL", c, container_id=cid, netns=netns, env=e)
            finally:
                await asyncio.to_thread(daemon.stop)
            return {"total": max(done) - started,
                    "adds": [d - started for d in done],
                    "vif": [t - started for t in seen["vif"].values()],
                    "active": [t - started for t in seen["active"].values()],
                    "calls": delta(after, before),
                    "calls_to_vifs": delta(at_vifs or after, before),
                    "pods": count}
    finally:
        if controller is not None:
            processes.stop(controller, timeout=30)
        for name in netns_names:
            with contextlib.suppress(Exception):
                namespaces.remove(name)
        await _remove(neutron, config)
        await neutron.delete_router(router.id)
        await neutron.delete_subnet_pool(subnet_pool.id)
        neutron.close()


def _status(store: Any, namespace: str) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        return store.get(k8s.KURYR_NETWORKS, namespace, namespace).get("status") or {}
    return {}


async def _pool_ready(neutron: client.Neutron, count: int) -> bool:
    """Whether the controller's pool holds ``count`` ports (tagged as pool ports)."""
    ports = await neutron.list_ports(tags=list(neutron.base_tags))
    return sum(1 for p in ports if any(t.startswith("kuryr-pool=") for t in p.tags)) >= count


def _plugged_ahead(log: pathlib.Path) -> int:
    """How many pool ports the daemon has plugged ahead and seen installed (its log)."""
    return log.read_text(errors="replace").count(" plugged ahead in ")


async def _watch_vifs(store: Any, seen: dict[str, dict[str, float]], *, count: int,
                      health_port: int, at_vifs: dict[str, float]) -> None:
    """Record when each pod's VIF is written and turns active; once all ``count`` VIFs are
    written, the controller's Neutron calls so far go into ``at_vifs``."""
    while True:
        for port in store.list(k8s.KURYR_PORTS, "bench")[0]:
            name = port["metadata"]["name"]
            vif = (((port.get("status") or {}).get("vifs") or {}).get("eth0") or {}).get("vif")
            if vif and name not in seen["vif"]:
                seen["vif"][name] = time.perf_counter()
            if vif and vif.get("is_active") and name not in seen["active"]:
                seen["active"][name] = time.perf_counter()
        if len(seen["vif"]) >= count and not at_vifs:
            at_vifs.update(await asyncio.to_thread(neutron_calls, health_port))
        await asyncio.sleep(0.01)


async def _remove(neutron: client.Neutron, config: settings.KuryrSettings) -> None:
    """Everything tagged for this run's cluster: ports (unplugged first), then networks."""
    from kuryr.binding import ovs as ovs_binding

    binder = ovs_binding.OvsBinder(config.binding)
    try:
        # Pool ports a bulk create made after its caller gave up carry the pool's name but
        # not yet its tags: find those by name.
        found = {p.id: p for p in [
            *await neutron.list_ports(tags=list(neutron.base_tags)),
            *await neutron.list_ports(name=nodes.port_name(neutron.cluster_id))]}
        for port in found.values():
            await asyncio.to_thread(binder.unplug_sync, port.id)
            await neutron.delete_port(port.id)
    finally:
        binder.close()
    for net in await neutron.list_networks(tags=list(neutron.base_tags)):
        await networks.release_network(neutron, net.id)


def describe(label: str, runs: list[dict[str, Any]]) -> float:
    totals = [r["total"] for r in runs]
    median = float(statistics.median(totals))
    last = runs[-1]
    print(f"  kuryr, {label:<6} all ADDs done: median {median:6.2f} s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in totals)})")
    for what in ("vif", "active", "adds"):
        samples = last[what]
        if samples:
            print(f"    {what:<7} per pod (last run): median {statistics.median(samples):6.2f} s"
                  f"  p90 {percentile(samples, 0.9):6.2f} s  max {max(samples):6.2f} s")
    active = sorted(last["active"])
    if len(active) > 1:
        print(f"    ports turned ACTIVE one after another, one per "
              f"{(active[-1] - active[0]) / (len(active) - 1):.2f} s (Neutron's processing of "
              f"OVN's port-up events; ADDs wait for it only where readiness is Neutron's)")
    pods = last["pods"]

    def per_pod(calls: dict[str, int]) -> str:
        ops = {op: n for op, n in calls.items() if not op.startswith("pool ")}
        listed = ", ".join(f"{op} {n / pods:.2f}" for op, n in sorted(ops.items()))
        return f"{sum(ops.values()) / pods:.2f}" + (f" ({listed})" if listed else "")

    calls, to_vifs = last["calls"], last["calls_to_vifs"]
    later = {op: n - to_vifs.get(op, 0) for op, n in calls.items() if n - to_vifs.get(op, 0)}
    print(f"    Neutron calls per pod on the hot path, at most (the controller's until the last "
          f"VIF was written; the daemon makes none; last run): {per_pod(to_vifs)}; pool takes: hit "
          f"{calls.get('pool hit', 0)}, miss {calls.get('pool miss', 0)}")
    print(f"    Neutron calls per pod after the last VIF, until all ADDs were done (owner "
          f"retags, ACTIVE polling, pool refills; off the hot path): {per_pod(later)}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = settings.load()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kuryr-bench-pods-"))
    bin_dir = work / "bin"
    executable = install_cni.install_executable(bin_dir)
    for plugin in REFERENCE_PLUGINS.iterdir():
        (bin_dir / plugin.name).symlink_to(plugin)
    print(f"{args.pods} pods, {args.runs} runs each (logs in {work}):")
    bridge = [bridge_run(bin_dir, work, args.pods) for _ in range(args.runs)]
    bridge_median = statistics.median(bridge)
    print(f"  bridge+host-local, {args.pods} parallel ADDs: median {bridge_median:6.2f} s")
    medians = {}
    for label, pooled in (("pooled", True), ("cold", False)):
        runs = [asyncio.run(kuryr_run(config, executable, work, args.pods, pooled=pooled))
                for _ in range(args.runs)]
        medians[label] = describe(label, runs)
    print("Against upstream kuryr-kubernetes (2017, 50 pods Running) and bridge:")
    for label, median in medians.items():
        print(f"  {label:<6} {median:6.2f} s vs upstream {UPSTREAM[label]:5.0f} s "
              f"({UPSTREAM[label] / median:5.1f}x faster); vs bridge "
              f"{median / bridge_median:5.1f}x")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, OVS)")
    main()
