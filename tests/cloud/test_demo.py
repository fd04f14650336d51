"""The README's main job: `kuryr demo up` shows two sandboxes on Neutron ports pinging over
IPv4 and IPv6, Docker and podman containers (those installed) on the same network pinging each
other and the sandboxes, and a Service on Octavia (a load balancer in front of two sandboxes)
answering a third sandbox through its VIP and the cloud's outside namespace through its
floating IP; `kuryr demo down` leaves no port, namespace, network, container, process, load
balancer, floating IP, security group or router interface behind."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from kuryr import demo, demo_runtimes, demo_services, settings
from kuryr.linux import namespaces
from kuryr.neutron import client, connecting
from kuryr.octavia import client as octavia_client
from tests.conftest import unavailable

SANDBOX_PINGS = 4  # 2 sandboxes x (IPv4 + IPv6)
RUNTIME_PINGS = 3  # per runtime: container -> container, and to/from a sandbox or Docker
SERVICE_CHECKS = 2  # the third sandbox -> VIP, the outside namespace -> floating IP


def _kuryr(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kuryr", *argv], capture_output=True,
                          text=True, timeout=300)


def _processes_under(path: pathlib.Path) -> list[str]:
    """Command lines of live processes naming ``path`` (dockerd, containerd, shims, conmon)."""
    found = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            is_zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError, ValueError):
            continue
        if str(path) in cmdline and not is_zombie:
            found.append(cmdline)
    return found


def _is_running(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _host_leftovers(pids: list[int]) -> list[str]:
    """What the demo's runtimes left on this host: processes, files, mounts, Docker network."""
    left = [f"pid {pid}" for pid in pids if _is_running(pid)]
    left += _processes_under(demo_runtimes.WORKDIR)
    left += [str(p) for p in (demo_runtimes.WORKDIR, demo_runtimes.STATE_FILE,
                              demo_runtimes.PLUGIN_DIR / f"{demo_runtimes.NAME}.sock")
             if p.exists()]
    left += [line for line in pathlib.Path("/proc/self/mounts").read_text().splitlines()
             if str(demo_runtimes.WORKDIR) in line]
    if os.path.exists(demo_runtimes.SYSTEM_DOCKER.removeprefix("unix://")):
        listed = subprocess.run(["docker", "network", "ls", "-q", "-f",
                                 f"name={demo_runtimes.NAME}"], capture_output=True, text=True)
        left += [f"docker network {n}" for n in listed.stdout.split()]
    return left


@pytest.fixture
async def octavia(cloud_config: settings.KuryrSettings, neutron: client.Neutron
                  ) -> AsyncIterator[octavia_client.Octavia]:
    """Octavia as the demo finds it; the test is skipped (or fails, where real things are
    required) when the demo would skip its Service."""
    reason = await demo_services.probe(cloud_config)
    if reason is not None:
        unavailable(f"the demo would skip its Service: {reason}")
    facade = octavia_client.Octavia(
        connecting.connect(cloud_config.neutron,
                           load_balancer_endpoint=cloud_config.octavia.endpoint_override),
        base_tags=neutron.base_tags)
    yield facade
    facade.close()


def _service_lines(stdout: str) -> dict[str, str]:
    """The Service checks the demo printed, by target kind ("VIP", "floating IP")."""
    found = {}
    for line in stdout.splitlines():
        check = re.match(r"\s+(ok  |FAIL) \S+ -> (VIP|floating IP) ", line)
        if check:
            found[check.group(2)] = line
    return found


async def _assert_service(stdout: str, neutron: client.Neutron,
                          octavia: octavia_client.Octavia) -> str:
    """The Service part of ``demo up``'s output, checked against Octavia and Neutron; returns
    the load balancer's ID."""
    (lb,) = await octavia.list_load_balancers(tags=[*octavia.base_tags, demo_services.TAG])
    assert lb.provisioning_status == "ACTIVE"
    assert f"Service on Octavia: load balancer {lb.id}" in stdout, stdout
    (fip,) = await neutron.list_floating_ips(tags=[*neutron.base_tags, demo_services.TAG])
    assert fip.port_id == lb.vip_port_id
    lines = _service_lines(stdout)
    vip, floating = lines["VIP"], lines["floating IP"]
    assert vip.lstrip().startswith(f"ok   {demo.SANDBOXES[2]} -> VIP {lb.vip_address}:80: "), vip
    assert floating.lstrip().startswith(
        f"ok   {demo_services.OUTSIDE} -> floating IP {fip.floating_ip_address}:80: "), floating
    for member in demo.SANDBOXES[:2]:  # both members answered, through the VIP and the FIP
        assert re.search(rf"{member} [1-9]", vip), vip
        assert re.search(rf"{member} [1-9]", floating), floating
    (listener,) = await octavia.list_listeners(loadbalancer_id=lb.id)
    assert (listener.protocol, listener.protocol_port) == ("TCP", 80)
    (pool,) = await octavia.list_pools(loadbalancer_id=lb.id)
    assert pool.lb_algorithm == "SOURCE_IP_PORT"
    assert len(await octavia.list_members(pool.id)) == 2
    return lb.id


async def test_demo_up_and_down(neutron: client.Neutron,
                                octavia: octavia_client.Octavia) -> None:
    runtimes, skipped = demo_runtimes.select(None)
    if skipped:
        unavailable(f"runtimes missing: {skipped}")
    with_ = ",".join(runtimes) or "none"
    pids: list[int] = []
    try:
        up = _kuryr("demo", "up", "--with", with_)
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.count("ok  ") == (SANDBOX_PINGS + RUNTIME_PINGS * len(runtimes)
                                           + SERVICE_CHECKS), up.stdout
        assert "FAIL" not in up.stdout
        assert "skipped" not in up.stdout
        assert "kuryr demo down" in up.stdout
        for runtime in runtimes:
            assert f"{runtime} a " in up.stdout and f"{runtime} b " in up.stdout, up.stdout
        ports = await neutron.list_ports(device_owner="compute:kuryr",
                                         tags=[demo.sandbox_tag(demo.SANDBOXES[0])])
        assert len(ports) == 1
        # The demo's pings went through on ovn-controller's word; Neutron's ACTIVE follows.
        assert (await neutron.wait_port_status(ports[0].id, "ACTIVE", timeout=30)).is_active
        (net,) = await neutron.list_networks(tags=[demo.NETWORK_TAG])
        on_net = [p for p in await neutron.list_ports(network_id=net.id)
                  if p.device_owner == "compute:kuryr"]
        assert len(on_net) == len(demo.SANDBOXES) + 2 * len(runtimes)
        for port in on_net:
            assert (await neutron.wait_port_status(port.id, "ACTIVE", timeout=30)).is_active
        first_lb = await _assert_service(up.stdout, neutron, octavia)
        state = json.loads(demo_runtimes.STATE_FILE.read_text())
        pids = [p["pid"] for p in state["processes"]]
        servers = [p for p in state["processes"] if p["marker"] == demo_services.SERVER_MARKER]
        assert len(servers) == 2
        assert all(_is_running(pid) for pid in pids)

        again = _kuryr("demo", "up", "--with", with_)  # idempotent: replaces the earlier demo
        assert again.returncode == 0, again.stdout + again.stderr
        assert "FAIL" not in again.stdout
        assert not any(_is_running(pid) for pid in pids), "the first demo's processes stopped"
        assert await _assert_service(again.stdout, neutron, octavia) != first_lb
        state = json.loads(demo_runtimes.STATE_FILE.read_text())
        pids = [p["pid"] for p in state["processes"]]
    finally:
        down = _kuryr("demo", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(not namespaces.exists(name) for name in demo.SANDBOXES)
    assert await neutron.list_networks(tags=[demo.NETWORK_TAG]) == []
    for name in demo.SANDBOXES:
        assert await neutron.list_ports(tags=[demo.sandbox_tag(name)]) == []
    assert await neutron.list_ports(network_id=net.id) == []
    assert await octavia.list_load_balancers(tags=[demo_services.TAG]) == []
    assert await octavia.list_load_balancers(name=demo_services.NAME) == []
    assert await neutron.list_floating_ips(tags=[demo_services.TAG]) == []
    assert await neutron.list_floating_ips(description=demo_services.FIP_DESCRIPTION) == []
    assert await neutron.list_security_groups(name=demo_services.SECURITY_GROUP) == []
    assert _host_leftovers(pids) == []
    again = _kuryr("demo", "down")  # idempotent
    assert again.returncode == 0, again.stdout + again.stderr


def test_demo_without_neutron_configured_says_what_to_do(tmp_path: object) -> None:
    conf = f"{tmp_path}/empty.conf"
    with open(conf, "w") as f:
        f.write("[DEFAULT]\n")
    result = _kuryr("demo", "up", "--config", conf)
    assert result.returncode == 1
    assert "Error: Neutron is not configured" in result.stderr
    assert "Traceback" not in result.stderr
    assert isinstance(settings.load(conf), settings.KuryrSettings)


@pytest.mark.usefixtures("cloud_config")
def test_demo_refuses_an_unknown_runtime() -> None:
    result = _kuryr("demo", "up", "--with", "docker,rkt")
    assert result.returncode == 1
    assert "Error: --with: unknown runtime rkt" in result.stderr
    assert "Traceback" not in result.stderr
