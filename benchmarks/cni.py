"""CNI latency of kuryr beside the reference ``bridge`` + ``host-local`` plugins (a benchmark,
not a test). Needs root, the local cloud (``kuryr cloud up``), podman and
containernetworking-plugins.

    .venv/bin/python benchmarks/cni.py [--runs 50] [--podman-runs 10]

Measures, as a runtime invokes the executables: ADD and DEL (median, p90, p99) with a pooled
port, with a cold port, and with bridge; beside each kuryr ADD and DEL the daemon's share (the
daemon's own ``kuryr_cni_request_duration_seconds``, read from its ``/metrics`` around each
request) and the Neutron calls per container the request waited for (its hot path) or that ran
in the background meanwhile (``kuryr_neutron_calls_total`` by ``request``); a bare Neutron port
create + plug + wait for readiness, in-process, as the baseline of a cold ADD; VERSION; and
``podman run --rm IMG true`` on a kuryr network vs a bridge network. Prints ratios against the
targets (pooled ADD <= 2x bridge ADD, pooled DEL <= 1x bridge DEL, cold ADD <= 2x the bare
create + plug, VERSION <= 25 ms, podman run <= 1.2x).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import prometheus_client.parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.runtimes.conftest import REFERENCE_PLUGINS  # noqa: E402
from tests.runtimes.test_podman import Podman  # noqa: E402
from tests.support import cni  # noqa: E402

from kuryr import binding, settings  # noqa: E402
from kuryr.cli import install_cni  # noqa: E402
from kuryr.linux import namespaces  # noqa: E402
from kuryr.neutron import client, resources  # noqa: E402
from kuryr.ports import lifecycle  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"median": statistics.median(ordered) * 1000, "p90": pick(0.9), "p99": pick(0.99)}


def show(label: str, samples: list[float]) -> dict[str, float]:
    s = stats(samples)
    print(f"  {label:<28} median {s['median']:7.1f} ms   p90 {s['p90']:7.1f} ms   "
          f"p99 {s['p99']:7.1f} ms   (n={len(samples)})")
    return s


def timed(executable: pathlib.Path, command: str, config: dict[str, object], *,
          container_id: str = "", netns: str = "") -> float:
    started = time.perf_counter()
    rc, out = cni.invoke(executable, command, config, container_id=container_id, netns=netns)
    elapsed = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"{command} failed: {out}")
    return elapsed


def scrape(health_port: int) -> Samples:
    """The daemon's metrics: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in prometheus_client.parser.text_string_to_metric_families(text)
            for sample in family.samples}


def daemon_seconds(before: Samples, after: Samples, command: str) -> float:
    """The daemon's own time for the one ``command`` served between two scrapes."""
    key = ("kuryr_cni_request_duration_seconds_sum", (("command", command), ("result", "ok")))
    return after.get(key, 0.0) - before.get(key, 0.0)


def neutron_seconds(before: Samples, after: Samples) -> dict[str, float]:
    """The mean latency of the daemon's Neutron calls between two scrapes, by operation."""
    sums: dict[str, list[float]] = {}
    for (name, labels), value in after.items():
        if name in ("kuryr_neutron_call_seconds_sum", "kuryr_neutron_call_seconds_count"):
            entry = sums.setdefault(dict(labels)["operation"], [0.0, 0.0])
            entry[name.endswith("_count")] += value - before.get((name, labels), 0.0)
    return {op: total / count for op, (total, count) in sums.items() if count}


def neutron_calls(before: Samples, after: Samples) -> collections.Counter[tuple[str, str]]:
    """Neutron calls between two scrapes by (request: ADD, DEL or background, operation)."""
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    for (name, labels), value in after.items():
        if name == "kuryr_neutron_calls_total":
            found = dict(labels)
            delta = value - before.get((name, labels), 0.0)
            if delta:
                calls[found["request"], found["operation"]] += int(delta)
    return calls


@dataclasses.dataclass
class Runs:
    """ADD and DEL latencies as the runtime sees them, and, for kuryr, the daemon's share and
    the Neutron calls made meanwhile."""

    adds: list[float] = dataclasses.field(default_factory=list)
    dels: list[float] = dataclasses.field(default_factory=list)
    daemon_adds: list[float] = dataclasses.field(default_factory=list)
    daemon_dels: list[float] = dataclasses.field(default_factory=list)
    calls: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter)
    call_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def add_del(executable: pathlib.Path, config: dict[str, object], runs: int, *,
            pause: float = 0.0, health_port: int | None = None) -> Runs:
    """``runs`` ADD + DEL pairs, each into a fresh namespace; with ``health_port`` (a kuryr
    daemon's) its metrics are read before and after every request (outside the timings)."""
    out = Runs()
    start = scrape(health_port) if health_port else {}
    for _ in range(runs):
        name = f"kb-{uuid.uuid4().hex[:8]}"
        namespaces.create(name)
        cid = uuid.uuid4().hex
        try:
            for command, samples, share in (("ADD", out.adds, out.daemon_adds),
                                            ("DEL", out.dels, out.daemon_dels)):
                before = scrape(health_port) if health_port else {}
                samples.append(timed(executable, command, config, container_id=cid,
                                     netns=f"/run/netns/{name}"))
                if health_port:
                    share.append(daemon_seconds(before, scrape(health_port), command))
        finally:
            namespaces.remove(name)
        time.sleep(pause)
    if health_port:
        end = scrape(health_port)
        out.calls = neutron_calls(start, end)
        out.call_seconds = neutron_seconds(start, end)
    return out


def show_calls(label: str, runs: Runs) -> None:
    """The Neutron calls per container: those an ADD or DEL waited for (hot path), and those
    of background work (retags, releases, pool refills) that ran during the runs."""
    count = len(runs.adds)

    def per(request: str) -> str:
        ops = sorted((op, n) for (r, op), n in runs.calls.items() if r == request)
        total = sum(n for _, n in ops) / count
        detail = ", ".join(f"{op} {n / count:.2f}" for op, n in ops)
        return f"{total:.2f}" + (f" ({detail})" if detail else "")

    print(f"  {label} Neutron calls per container: hot path ADD {per('ADD')}, DEL {per('DEL')};"
          f" off the hot path (background) {per('background')}")
    if runs.call_seconds:
        print("    mean Neutron call latency: " + ", ".join(
            f"{op} {s * 1000:.0f} ms" for op, s in sorted(runs.call_seconds.items())))


async def bare_neutron(config: settings.KuryrSettings, network_id: str,
                       runs: int) -> list[float]:
    """In-process, no daemon: create a port (bound to this host), plug it into a fresh
    namespace and wait until it is ready (``ovn-installed``, or Neutron's ACTIVE), timed; the
    network and subnets a VIF needs are read once beforehand. The baseline of a cold ADD."""
    neutron = client.Neutron.from_settings(config)
    binders = binding.binders(config.binding)
    binder = binders["ovs"]
    host = config.binding.host
    samples = []
    try:
        network = await neutron.get_network(network_id)
        subnets = await neutron.list_subnets(network_id=network_id)
        for i in range(runs):
            name = f"kb-{uuid.uuid4().hex[:8]}"
            namespaces.create(name)
            vif = None
            try:
                started = time.perf_counter()
                port = await neutron.create_port(network_id, name=f"kb-bare-{i}", host_id=host,
                                                 device_owner=lifecycle.DEVICE_OWNER)
                vif = resources.vif(port, network, subnets)
                await binder.plug(vif, netns=name, ifname="eth0")
                await lifecycle.wait_ready(neutron, binder, port, vif, timeout=60)
                samples.append(time.perf_counter() - started)
            finally:
                if vif is not None:
                    await binder.unplug(vif)
                    await neutron.delete_port(vif.port_id)
                namespaces.remove(name)
    finally:
        for b in binders.values():
            b.close()
        neutron.close()
    return samples


def podman_runs(podman: Podman, network: str, image: str, runs: int) -> list[float]:
    samples = []
    podman("run", "--rm", "--network", network, image, "true")  # warm up
    for _ in range(runs):
        started = time.perf_counter()
        podman("run", "--rm", "--network", network, image, "true")
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--podman-runs", type=int, default=10)
    args = parser.parse_args()
    config = settings.load()
    work = pathlib.Path(tempfile.mkdtemp(prefix="kuryr-bench-"))
    bin_dir = work / "bin"
    executable = install_cni.install_executable(bin_dir)
    for plugin in REFERENCE_PLUGINS.iterdir():
        (bin_dir / plugin.name).symlink_to(plugin)
    n = uuid.uuid4().int % 200 + 20
    net = asyncio.run(_setup(config, n))
    try:
        results: dict[str, dict[str, float]] = {}
        bridge_conf: dict[str, object] = {
            "cniVersion": "1.0.0", "name": "kb-bridge", "type": "bridge", "bridge": "kb-br0",
            "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.249.0.0/22",
                                        "dataDir": str(work / "ipam")}}
        bridge = bin_dir / "bridge"
        print(f"ADD/DEL as a runtime invokes them, {args.runs} runs each:")
        runs = add_del(bridge, bridge_conf, args.runs)
        results["bridge ADD"] = show("bridge+host-local ADD", runs.adds)
        results["bridge DEL"] = show("bridge+host-local DEL", runs.dels)
        subprocess.run(["ip", "link", "del", "kb-br0"], capture_output=True)

        results["bare"] = show("bare Neutron create+plug", asyncio.run(
            bare_neutron(config, net.id, args.runs)))

        cold = cni.DaemonProcess(work, config_file=config.source)
        with cni.running(cold):
            conf = cni.netconf("1.0.0", net.id, socket_path=cold.socket, name="kb-cold")
            add_del(executable, conf, 1)  # the first ADD looks the network up
            runs = add_del(executable, conf, args.runs, health_port=cold.health_port)
            results["cold ADD"] = show("kuryr cold port ADD", runs.adds)
            show("  of which in the daemon", runs.daemon_adds)
            results["cold DEL"] = show("kuryr cold port DEL", runs.dels)
            show("  of which in the daemon", runs.daemon_dels)
            show_calls("cold:", runs)

        pooled = cni.DaemonProcess(work, config_file=config.source, pool=True, env={
            "KURYR_CNI_DAEMON_POOL_SIZE": "10", "KURYR_CNI_DAEMON_POOL_BATCH": "10"})
        with cni.running(pooled):
            conf = cni.netconf("1.0.0", net.id, socket_path=pooled.socket, name="kb-pool")
            add_del(executable, conf, 2, pause=3)  # the first ADD creates the pool
            time.sleep(5)
            runs = add_del(executable, conf, args.runs, pause=0.3,
                           health_port=pooled.health_port)
            results["pooled ADD"] = show("kuryr pooled port ADD", runs.adds)
            results["pooled ADD daemon"] = show("  of which in the daemon", runs.daemon_adds)
            results["pooled DEL"] = show("kuryr pooled port DEL (recycle)", runs.dels)
            show("  of which in the daemon", runs.daemon_dels)
            show_calls("pooled:", runs)

        versions = [timed(executable, "VERSION", {"cniVersion": "1.0.0"})
                    for _ in range(args.runs)]
        bridge_versions = [timed(bridge, "VERSION", {"cniVersion": "1.0.0"})
                           for _ in range(args.runs)]
        print("VERSION:")
        results["VERSION"] = show("kuryr VERSION", versions)
        show("bridge VERSION", bridge_versions)

        print(f"podman run --rm IMG true, {args.podman_runs} runs each:")
        tarball = busybox_tarball(work)
        (work / "podman").mkdir()
        podman = Podman(work / "podman", bin_dir)
        podman("import", str(tarball), "kb-busybox")
        with cni.running(cni.DaemonProcess(work, config_file=config.source, pool=True, env={
                "KURYR_CNI_DAEMON_POOL_SIZE": "5"})) as d:
            install_cni.write_conflist(podman.conf_dir, install_cni.conflist(
                name="kb-kuryr", network=net.id, daemon_socket=d.socket))
            (podman.conf_dir / "20-kb-bridge.conflist").write_text(json.dumps({
                "cniVersion": "1.0.0", "name": "kb-bridge", "plugins": [
                    {**bridge_conf, "bridge": "kb-br1",
                     "ipam": {"type": "host-local", "subnet": "10.248.0.0/22",
                              "dataDir": str(work / "ipam2")}}]}))
            podman_runs(podman, "kb-kuryr", "kb-busybox", 1)
            time.sleep(3)
            kuryr_runs = podman_runs(podman, "kb-kuryr", "kb-busybox", args.podman_runs)
            bridge_runs = podman_runs(podman, "kb-bridge", "kb-busybox", args.podman_runs)
        results["podman kuryr"] = show("podman run, kuryr network", kuryr_runs)
        results["podman bridge"] = show("podman run, bridge network", bridge_runs)
        subprocess.run(["ip", "link", "del", "kb-br1"], capture_output=True)

        def ratio(a: str, b: str) -> float:
            return results[a]["median"] / results[b]["median"]

        print("Ratios (medians) against the targets:")
        print(f"  pooled ADD / bridge ADD  {ratio('pooled ADD', 'bridge ADD'):5.2f}  "
              f"(target <= 2; the daemon's share {results['pooled ADD daemon']['median']:.1f} "
              f"of {results['pooled ADD']['median']:.1f} ms)")
        print(f"  pooled DEL / bridge DEL  {ratio('pooled DEL', 'bridge DEL'):5.2f}  "
              "(target <= 1)")
        print(f"  cold ADD / bare create+plug {ratio('cold ADD', 'bare'):5.2f}  (target <= 2)")
        print(f"  cold ADD / bridge ADD    {ratio('cold ADD', 'bridge ADD'):5.2f}")
        print(f"  VERSION                  {results['VERSION']['median']:5.1f} ms "
              "(target <= 25 ms)")
        print(f"  podman run kuryr/bridge  {ratio('podman kuryr', 'podman bridge'):5.2f}  "
              "(target <= 1.2)")
    finally:
        asyncio.run(_cleanup(config, net.id))


def busybox_tarball(work: pathlib.Path) -> pathlib.Path:
    tree = work / "rootfs"
    (tree / "bin").mkdir(parents=True)
    subprocess.run(["cp", "/bin/busybox", str(tree / "bin/busybox")], check=True)
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                                 check=True).stdout.split():
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    tarball = work / "busybox.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tarball), "."], check=True)
    return tarball


async def _setup(config: settings.KuryrSettings, n: int) -> resources.Network:
    neutron = client.Neutron.from_settings(config)
    try:
        net = await neutron.create_network(f"kb-{n}", tags=["kuryr-bench=1"])
        await neutron.create_subnet(net.id, cidr=f"10.{n}.0.0/22", ip_version=4)
        return net
    finally:
        neutron.close()


async def _cleanup(config: settings.KuryrSettings, network_id: str) -> None:
    from tests.cloud.conftest import remove_network

    neutron = client.Neutron.from_settings(config)
    try:
        await remove_network(neutron, config, network_id)
    finally:
        neutron.close()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, OVS)")
    main()
