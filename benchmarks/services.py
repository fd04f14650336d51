"""Services on Octavia (a benchmark, not a test): the time from creating a Service to the first
connection through its VIP, and from a new endpoint becoming ready to traffic reaching it,
median of several runs, with the Octavia calls each made; next to the raw Octavia figures
measured on this machine (``../shared/docs/octavia.md``: a load balancer ACTIVE in 0.67 s, a
listener 0.22 s, a pool 0.26 s, a member 0.67 s). Needs root and the local cloud with Octavia
(``kuryr cloud up``).

    .venv/bin/python benchmarks/services.py [--runs 5]

Set-up, before any clock: a Kubernetes API double (clusterIPs, EndpointSlices), the
controller in this process, a ``kuryr daemon --mode kubernetes``, one namespace with two
backend pods and a client pod plugged into network namespaces. Each run: a Service (one TCP
port) is created at t0 and the client connects to VIP:80 every 50 ms (one connection, 0.3 s
timeout) until one is answered; then a third backend pod is started and marked ready (its
endpoint appears in the slice) at t1, and the client asks until that pod answers. The
Service is deleted (and its load balancer waited for) between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from tests.k8s import backends  # noqa: E402
from tests.k8s.conftest import (  # noqa: E402
    UNREACHABLE_NEUTRON,
    environ,
    eventually,
    making_cluster,
    metrics,
    running_controller,
)
from tests.support import cni, k8s  # noqa: E402

from kuryr import settings  # noqa: E402
from kuryr.cli import install_cni  # noqa: E402
from kuryr.linux import namespaces  # noqa: E402

OCTAVIA_MD = {"LB ACTIVE": 0.667, "listener ACTIVE": 0.22, "pool ACTIVE": 0.26,
              "member ACTIVE": 0.67}


async def octavia_calls(cluster: Any) -> dict[str, float]:
    samples = await metrics(cluster)
    return {dict(labels)["operation"]: value for (name, labels), value in samples.items()
            if name == "kuryr_octavia_calls_total"}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items())
            if v - before.get(k, 0) > 0}


async def first_answer(netns: str, vip: str, *, expect: str | None = None,
                       within: float = 120) -> float:
    """Seconds until a connection to vip:80 is answered (by ``expect``, if given)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        answers = await backends.ask(netns, vip, 80, count=1, timeout=0.3)
        if answers and not answers[0].startswith("fail") and (
                expect is None or answers[0].split()[0] == expect):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{vip}:80 not answered{' by ' + expect if expect else ''}")


async def run(runs: int) -> None:
    config = settings.load(environ={})
    work = pathlib.Path(tempfile.mkdtemp(prefix="kuryr-bench-svc-"))
    executable = install_cni.install_executable(work / "bin")
    made_ns: list[str] = []

    def make_netns() -> str:
        name = f"kb-{uuid.uuid4().hex[:8]}"
        namespaces.create(name)
        made_ns.append(name)
        return name

    async with making_cluster(config, with_services=True) as cluster:
        env = {**environ(cluster), **UNREACHABLE_NEUTRON, "KURYR_BINDING_HOST": cluster.node}
        (work / "daemon").mkdir()
        daemon = cni.DaemonProcess(work / "daemon", config_file=None, env=env,
                                   mode="kubernetes")
        daemon.start()
        pods = backends.Pods(cluster, daemon, executable, make_netns)
        try:
            async with running_controller(cluster):
                cluster.create_namespace("bench")
                await eventually(lambda: ((cluster.get(k8s.KURYR_NETWORKS, "bench", "bench")
                                           or {}).get("status") or {}).get("netId"),
                                 within=60, what="network")
                labels = {"app": "bench"}
                for name in ("b1", "b2"):
                    await pods.start("bench", name, labels=labels, tcp=[8080])
                client = await pods.start("bench", "client")
                created, followed, calls = [], [], []
                for i in range(runs):
                    before = await octavia_calls(cluster)
                    t0 = time.monotonic()
                    service = backends.create_service(
                        cluster, "bench", f"svc{i}", selector=labels,
                        ports=[{"port": 80, "targetPort": 8080}])
                    vip = backends.cluster_ip(service)
                    await first_answer(client.netns, vip)
                    created.append(time.monotonic() - t0)
                    made = await octavia_calls(cluster)
                    extra = await pods.start("bench", f"x{i}", labels=labels, tcp=[8080])
                    t1 = time.monotonic()  # its endpoint is ready in the slice now
                    await first_answer(client.netns, vip, expect=f"x{i}")
                    followed.append(time.monotonic() - t1)
                    after = await octavia_calls(cluster)
                    calls.append((delta(made, before), delta(after, made)))
                    print(f"run {i + 1}: service -> first answer {created[-1]:.2f} s; new "
                          f"endpoint -> its first answer {followed[-1]:.2f} s", flush=True)
                    await pods.stop(extra)
                    cluster.api.store.delete(k8s.SERVICES, "bench", f"svc{i}")
                    await eventually(
                        lambda n=f"svc{i}": cluster.get(k8s.KURYR_LOAD_BALANCERS, "bench",
                                                        n) is None,
                        within=60, what="load balancer released")
        finally:
            await pods.close()
            daemon.stop()
            for name in made_ns:
                namespaces.remove(name)

    def line(label: str, values: list[float]) -> str:
        return (f"{label:<44} median {statistics.median(values):6.2f} s   min "
                f"{min(values):6.2f}   max {max(values):6.2f}")

    print()
    print(f"Services on Octavia (OVN provider), {runs} runs, {os.cpu_count()} cores")
    print(line("Service created -> first connection via VIP", created))
    print(line("endpoint ready -> traffic reaches it", followed))
    print(f"Octavia calls, Service creation (run 1): {calls[0][0]}")
    print(f"Octavia calls, endpoint change (run 1):  {calls[0][1]}")
    print("raw Octavia here (octavia.md): " +
          ", ".join(f"{k} {v:.2f} s" for k, v in OCTAVIA_MD.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, OVS) and the local cloud (kuryr cloud up)")
    asyncio.run(run(args.runs))


if __name__ == "__main__":
    main()
