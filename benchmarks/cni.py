"""CNI latency of kuryr beside the reference ``bridge`` + ``host-local`` plugins (a benchmark,
not a test). Needs root, the local cloud (``kuryr cloud up``), podman and
containernetworking-plugins.

    .venv/bin/python benchmarks/cni.py [--runs 50] [--podman-runs 10]

Measures, as a runtime invokes the executables: ADD and DEL (median, p90, p99) with a pooled
port, with a cold port, and with bridge; VERSION; and ``podman run --rm IMG true`` on a kuryr
network vs a bridge network. Prints ratios against the targets (pooled ADD <= 2x bridge ADD,
VERSION <= 25 ms, podman run <= 1.2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.runtimes.conftest import REFERENCE_PLUGINS  # noqa: E402
from tests.runtimes.test_podman import Podman  # noqa: E402
from tests.support import cni  # noqa: E402

from kuryr import settings  # noqa: E402
from kuryr.cli import install_cni  # noqa: E402
from kuryr.linux import namespaces  # noqa: E402
from kuryr.neutron import client, resources  # noqa: E402


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


def add_del(executable: pathlib.Path, config: dict[str, object], runs: int, *,
            pause: float = 0.0) -> tuple[list[float], list[float]]:
    adds, dels = [], []
    for _ in range(runs):
        name = f"kb-{uuid.uuid4().hex[:8]}"
        namespaces.create(name)
        cid = uuid.uuid4().hex
        try:
            adds.append(timed(executable, "ADD", config, container_id=cid,
                              netns=f"/run/netns/{name}"))
            dels.append(timed(executable, "DEL", config, container_id=cid,
                              netns=f"/run/netns/{name}"))
        finally:
            namespaces.remove(name)
        time.sleep(pause)
    return adds, dels


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
        adds, dels = add_del(bridge, bridge_conf, args.runs)
        results["bridge ADD"] = show("bridge+host-local ADD", adds)
        results["bridge DEL"] = show("bridge+host-local DEL", dels)
        subprocess.run(["ip", "link", "del", "kb-br0"], capture_output=True)

        cold = cni.DaemonProcess(work, config_file=config.source)
        with cni.running(cold):
            conf = cni.netconf("1.0.0", net.id, socket_path=cold.socket, name="kb-cold")
            adds, dels = add_del(executable, conf, args.runs)
            results["cold ADD"] = show("kuryr cold port ADD", adds)
            results["cold DEL"] = show("kuryr cold port DEL", dels)

        pooled = cni.DaemonProcess(work, config_file=config.source, pool=True, env={
            "KURYR_CNI_DAEMON_POOL_SIZE": "10", "KURYR_CNI_DAEMON_POOL_BATCH": "10"})
        with cni.running(pooled):
            conf = cni.netconf("1.0.0", net.id, socket_path=pooled.socket, name="kb-pool")
            add_del(executable, conf, 2, pause=3)  # the first ADD creates the pool
            time.sleep(5)
            adds, dels = add_del(executable, conf, args.runs, pause=0.3)
            results["pooled ADD"] = show("kuryr pooled port ADD", adds)
            results["pooled DEL"] = show("kuryr pooled port DEL (recycle)", dels)

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
              "(target <= 2)")
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
