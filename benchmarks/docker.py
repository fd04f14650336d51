"""Benchmark (not a timed test): ``docker run --rm IMG true`` on a kuryr network, against
``--network none`` and against the network of a trivial remote driver whose Join only makes a
veth (Docker's default IPAM; no Neutron, no OVS). Median of several runs, ratios printed, and
the Neutron calls each kuryr run made while Docker waited (the driver logs every call with the
Docker call it served; ``background`` work, the pool's refills and releases, is counted apart).
With the warm pool (the default) each kuryr run starts once the network's pool is full again,
so it measures a container on a ready pool. Needs root, docker.io and busybox-static, and the
local cloud. Uses its own dockerd and driver.

    .venv/bin/python benchmarks/docker.py [--runs 7] [--no-wait-active] [--no-pool]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pathlib
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

from aiohttp import web

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import dockerd as support  # noqa: E402

from kuryr import settings  # noqa: E402
from kuryr.linux import interfaces  # noqa: E402
from kuryr.neutron import connecting, tagging  # noqa: E402
from kuryr.pools import warm  # noqa: E402

_CALL = re.compile(r"Neutron call (?P<operation>[a-z ]+): \w+ in [\d.]+ ms, for (?P<call>\S+)")


class TrivialDriver:
    """A remote network driver that makes a veth at Join and nothing else, served from a
    thread on ``/run/docker/plugins/<name>.sock``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socket = support.PLUGIN_DIR / f"{name}.sock"
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        call = request.path.lstrip("/")
        body: dict[str, Any] = await request.json() if await request.read() else {}
        reply: dict[str, Any] = {}
        if call == "Plugin.Activate":
            reply = {"Implements": ["NetworkDriver"]}
        elif call == "NetworkDriver.GetCapabilities":
            reply = {"Scope": "local"}
        elif call == "NetworkDriver.Join":
            peer = "kbp" + body["EndpointID"][:10]
            await asyncio.to_thread(interfaces.create_veth, "kbh" + body["EndpointID"][:10],
                                    peer, mac="02:00:00:00:00:01", mtu=1500)
            reply = {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
                     "DisableGatewayService": True}
        elif call == "NetworkDriver.Leave":
            await asyncio.to_thread(interfaces.delete_link, "kbh" + body["EndpointID"][:10])
        return web.json_response(reply)

    def start(self) -> None:
        async def serve() -> None:
            app = web.Application()
            app.router.add_route("POST", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            self.socket.parent.mkdir(parents=True, exist_ok=True)
            await web.UnixSite(self.runner, str(self.socket)).start()

        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(timeout=10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.socket.unlink(missing_ok=True)


def _time_run(engine: support.Dockerd, image: str, network: str) -> float:
    started = time.perf_counter()
    engine.docker("run", "--rm", "--network", network, image, "true")
    return time.perf_counter() - started


def _neutron_calls(log: pathlib.Path, since: int) -> collections.Counter[str]:
    """Neutron calls logged by the driver after byte ``since``, by 'DockerCall: operation'."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return collections.Counter(f"{m['call']}: {m['operation']}" for m in _CALL.finditer(text))


def _wait_pool(conn: object, network_id: str, tag: str, size: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = conn.network.ports(network_id=network_id, tags=[tag])  # type: ignore[attr-defined]
        if len([p for p in ports if p.status == "ACTIVE"]) >= size:
            return
        time.sleep(0.2)
    raise SystemExit(f"the pool of network {network_id} did not fill in {timeout:g} s")


def main(runs: int, wait_active: bool, pool: bool) -> None:
    failure = support.install_packages()
    if failure:
        raise SystemExit(f"cannot install {support.PACKAGES}: {failure}")
    config = settings.load()
    assert config.source is not None, "no kuryr.conf: run 'kuryr cloud up' first"
    run_id = uuid.uuid4().hex[:6]
    conn = connecting.connect(config.neutron)
    with tempfile.TemporaryDirectory(prefix="kuryr-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        driver = support.Driver(f"kb-{run_id}", config=config.source, log=workdir / "kuryr.log")
        trivial = TrivialDriver(f"kbveth-{run_id}")
        engine = support.Dockerd(workdir / "engine")
        pool_tag = tagging.owner(warm.TAG_POOL_HOST,
                                 f"{config.binding.host}:docker-{driver.name}")
        try:
            driver.start(KURYR_LIBNETWORK_WAIT_ACTIVE="true" if wait_active else "false",
                         KURYR_LIBNETWORK_POOL_ENABLED="true" if pool else "false")
            trivial.start()
            engine.start()
            image = support.import_busybox(engine, workdir)
            engine.docker("network", "create", "-d", driver.name, "--ipam-driver",
                          driver.name, "--subnet", "10.251.77.0/24", "kb-kuryr")
            engine.docker("network", "create", "-d", trivial.name, "--subnet",
                          "10.252.77.0/24", "kb-veth")
            docker_id = engine.docker("network", "inspect", "-f", "{{.Id}}",
                                      "kb-kuryr").stdout.strip()
            (net,) = conn.network.networks(tags=[f"kuryr-docker-network={docker_id}"])
            networks = {"none": "none", "trivial veth driver": "kb-veth",
                        "kuryr (Neutron port)": "kb-kuryr"}
            for network in networks.values():  # warm up: first use activates the drivers
                _time_run(engine, image, network)
            times: dict[str, list[float]] = {name: [] for name in networks}
            hot: collections.Counter[str] = collections.Counter()
            if pool:
                _wait_pool(conn, net.id, pool_tag, config.libnetwork.pool_size)
            started = driver.log.stat().st_size
            for _ in range(runs):
                for name, network in networks.items():
                    if network == "kb-kuryr" and pool:
                        _wait_pool(conn, net.id, pool_tag, config.libnetwork.pool_size)
                    since = driver.log.stat().st_size
                    times[name].append(_time_run(engine, image, network))
                    if network == "kb-kuryr":
                        hot.update(k for k, n in _neutron_calls(driver.log, since).items()
                                   if not k.startswith("background") for _ in range(n))
            if pool:  # the last run's background work (release, refill) done too
                _wait_pool(conn, net.id, pool_tag, config.libnetwork.pool_size)
                time.sleep(2)
            background = collections.Counter({
                k: n for k, n in _neutron_calls(driver.log, started).items()
                if k.startswith("background")})
            medians = {name: statistics.median(values) for name, values in times.items()}
            print(f"docker run --rm IMG true, median of {runs} "
                  f"(kuryr wait_active={'on' if wait_active else 'off'}, "
                  f"pool={'on: each run on a full pool' if pool else 'off'}):")
            for name, median in medians.items():
                print(f"  {name:<22} {median * 1000:7.0f} ms   "
                      f"(min {min(times[name]) * 1000:.0f}, max {max(times[name]) * 1000:.0f})")
            kuryr, veth = medians["kuryr (Neutron port)"], medians["trivial veth driver"]
            print(f"  kuryr / trivial driver = {kuryr / veth:.2f}x   (target <= 1.2x)")
            print(f"  kuryr / --network none = {kuryr / medians['none']:.2f}x")
            print(f"Neutron calls per kuryr run while Docker waited: "
                  f"{sum(hot.values()) / runs:g}")
            for key, count in sorted(hot.items()):
                print(f"  {key:<50} {count / runs:g}")
            print(f"Neutron calls per kuryr run in the background (retag, release, refill): "
                  f"{sum(background.values()) / runs:g}")
            for key, count in sorted(background.items()):
                print(f"  {key:<50} {count / runs:g}")
        finally:
            if engine.process is not None:
                engine.remove_everything()
            engine.stop()
            engine.unmount()
            trivial.stop()
            driver.stop()
            conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-wait-active", action="store_true",
                        help="kuryr's Join does not wait for the port to be ACTIVE")
    parser.add_argument("--no-pool", action="store_true",
                        help="kuryr's driver without its warm pool ([libnetwork] pool_enabled)")
    args = parser.parse_args()
    main(args.runs, not args.no_wait_active, not args.no_pool)
