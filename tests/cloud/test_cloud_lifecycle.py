"""``kuryr cloud`` against the real local cloud: status, a fast idempotent up, recovery from
killed daemons, stop and start, the shell environment, Octavia listing the OVN provider, the
external network and its outside namespace (a floating IP answers ping from there); and that a
stale pidfile never leads to signalling an unrelated process.

The cloud is shared with the other tests of the run: every test leaves it up and healthy.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kuryr import binding, settings
from kuryr.cli import cloud as cli_cloud
from kuryr.cloud import external, layout, lifecycle, services
from kuryr.linux import interfaces, namespaces
from kuryr.neutron import client, resources
from kuryr.ports import lifecycle as ports
from tests.cloud.conftest import TEST_TAG
from tests.conftest import RUN_ID, netns_run
from tests.support import peers

SERVICES = {"ovsdb-server", "ovs-vswitchd", "ovn-nb-db", "ovn-sb-db", "ovn-northd",
            "ovn-controller", "mariadb", "neutron-api", "neutron-ovn-maintenance-worker",
            "octavia-driver-agent", "octavia-api"}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KURYR_CLOUD_STATE_DIR") or settings.DEFAULT_STATE_DIR)


@pytest.fixture
def cloud(cloud_config: settings.KuryrSettings) -> Iterator[layout.CloudLayout]:
    """The shared local cloud, up; brought up again after the test whatever it did."""
    cloud_layout = layout.CloudLayout(_state_dir())
    yield cloud_layout
    if not lifecycle.status(cloud_layout).healthy:
        lifecycle.up(cloud_layout)


def _pids(cloud: layout.CloudLayout) -> dict[str, int | None]:
    return {s.name: s.pid for s in lifecycle.status(cloud).services}


def _service(cloud: layout.CloudLayout, name: str) -> services.Service:
    return next(s for s in services.catalog(cloud) if s.name == name)


def _rest(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def _neutron(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return _rest(method, f"{layout.NEUTRON_URL}v2.0/{path}", body)


def test_status_is_healthy_after_up(cloud: layout.CloudLayout) -> None:
    result = lifecycle.status(cloud)
    assert {s.name for s in result.services} == SERVICES
    assert all(s.running for s in result.services), result.services
    assert result.api.agent_alive, result.api.detail
    assert result.healthy


def test_status_command_prints_every_service_and_exits_0(cloud: layout.CloudLayout) -> None:
    outcome = CliRunner().invoke(cli_cloud.cloud, ["--state-dir", str(cloud.state_dir),
                                                   "status"])
    assert outcome.exit_code == 0, outcome.output
    for name in SERVICES:
        assert name in outcome.output
    assert "OVN Controller agent: alive" in outcome.output
    assert "Octavia API:          ovn listed" in outcome.output
    assert f"Outside namespace:    present ({layout.OUTSIDE_NETNS}" in outcome.output


def test_up_on_a_running_cloud_returns_at_once_and_restarts_nothing(
        cloud: layout.CloudLayout) -> None:
    before = _pids(cloud)
    said: list[str] = []
    started = time.monotonic()
    result = lifecycle.up(cloud, progress=said.append)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, said
    assert result.healthy
    assert _pids(cloud) == before
    assert said == ["the local cloud is already up"]


def test_up_recovers_a_killed_api_ovn_controller_and_driver_agent(
        cloud: layout.CloudLayout) -> None:
    before = _pids(cloud)
    killed = {name: before[name]
              for name in ("neutron-api", "ovn-controller", "octavia-driver-agent")}
    for pid in killed.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(services.running_pid(_service(cloud, n)) for n in killed):
        assert time.monotonic() < deadline, "killed daemons still look alive"
        time.sleep(0.05)
    assert not lifecycle.status(cloud).healthy

    result = lifecycle.up(cloud)

    assert result.healthy, result
    after = _pids(cloud)
    for name, old_pid in killed.items():
        assert after[name] not in (None, old_pid)
    # The Octavia API serves the provider only when started after the driver agent.
    assert after["octavia-api"] not in (None, before["octavia-api"])
    assert "ovn" in result.octavia.providers
    # What was not killed kept running (Neutron's database did not restart under it).
    for name in ("ovsdb-server", "ovs-vswitchd", "ovn-sb-db", "mariadb"):
        assert after[name] == before[name]


def test_down_then_up_restores_the_cloud(cloud: layout.CloudLayout) -> None:
    catalog = services.catalog(cloud)
    try:
        stopped = lifecycle.down(cloud)
        assert set(stopped) == SERVICES
        assert not any(services.running_pid(s) for s in catalog)
        assert not lifecycle.status(cloud).api.answering
        assert not lifecycle.status(cloud).octavia.answering
        assert not namespaces.exists(layout.OUTSIDE_NETNS)
        assert not interfaces.link_exists(layout.OUTSIDE_HOST_IFNAME)
        assert cloud.kuryr_conf.exists(), "down without --purge keeps the data"
    finally:
        result = lifecycle.up(cloud)
    assert result.healthy, result
    assert result.outside.present


def test_env_exports_point_clients_and_ovs_tools_at_the_cloud(
        cloud: layout.CloudLayout) -> None:
    text = lifecycle.env(cloud)
    assert f"export OS_CLIENT_CONFIG_FILE={cloud.clouds_yaml}" in text
    assert f"export OS_CLOUD={settings.LOCAL_CLOUD_NAME}" in text
    assert f"export KURYR_CONFIG={cloud.kuryr_conf}" in text
    assert layout.OCTAVIA_URL in text
    exported = dict(line.removeprefix("export ").split("=", 1)
                    for line in text.splitlines() if line.startswith("export "))
    env = {**os.environ, **{k: shlex.split(v)[0] for k, v in exported.items()}}
    found = subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", "br-int"], env=env,
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr


def test_generated_kuryr_conf_names_this_cloud(cloud: layout.CloudLayout) -> None:
    config = settings.load(cloud.kuryr_conf, environ={})
    assert config.neutron.cloud == settings.LOCAL_CLOUD_NAME
    assert config.neutron.clouds_yaml == str(cloud.clouds_yaml)
    assert config.binding.host == socket.gethostname()
    assert config.binding.ovsdb_connection == f"unix:{cloud.ovs_socket}"
    assert cloud.db_password_file.stat().st_mode & 0o777 == 0o600
    assert cloud.octavia_db_password_file.stat().st_mode & 0o777 == 0o600
    assert config.kubernetes.external_svc_net is not None
    found = _neutron("GET", f"networks/{config.kubernetes.external_svc_net}")["network"]
    assert found["name"] == external.NETWORK_NAME
    assert found["router:external"] is True
    assert found["provider:network_type"] == "flat"


def test_octavia_lists_the_ovn_provider_and_clouds_yaml_names_it(
        cloud: layout.CloudLayout) -> None:
    answer = _rest("GET", f"{layout.OCTAVIA_URL}v2/lbaas/providers")
    assert "ovn" in [p["name"] for p in answer["providers"]]
    entry = yaml.safe_load(cloud.clouds_yaml.read_text())["clouds"][settings.LOCAL_CLOUD_NAME]
    assert entry["load_balancer_endpoint_override"] == layout.OCTAVIA_URL


def test_the_outside_namespace_holds_the_external_gateway(cloud: layout.CloudLayout) -> None:
    seen = interfaces.describe(layout.OUTSIDE_IFNAME, netns=layout.OUTSIDE_NETNS)
    assert seen is not None
    assert f"{external.GATEWAY}/24" in seen["addresses"]
    assert "tx-checksumming: off" in netns_run(layout.OUTSIDE_NETNS, "ethtool", "-k",
                                               layout.OUTSIDE_IFNAME).stdout
    subnet = _neutron("GET", f"subnets?name={external.SUBNET_NAME}")["subnets"][0]
    assert (subnet["cidr"], subnet["gateway_ip"], subnet["enable_dhcp"]) == (
        str(external.CIDR), str(external.GATEWAY), False)
    router = _neutron("GET", f"routers?name={external.ROUTER_NAME}")["routers"][0]
    assert router["external_gateway_info"]["network_id"] == subnet["network_id"]


async def test_a_floating_ip_answers_ping_from_the_outside_namespace(
        cloud: layout.CloudLayout, neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    router = _neutron("GET", f"routers?name={external.ROUTER_NAME}")["routers"][0]["id"]
    subnet = next(s for s in await neutron.list_subnets(network_id=network.id)
                  if s.ip_version == 4)
    group = await neutron.create_security_group(f"kt-{RUN_ID}-icmp", tags=[TEST_TAG])
    await neutron.create_security_group_rule(group.id, protocol="icmp",
                                             remote_ip_prefix="0.0.0.0/0")
    await asyncio.to_thread(_neutron, "PUT", f"routers/{router}/add_router_interface",
                            {"subnet_id": subnet.id})
    attachment = None
    floating: str | None = None
    try:
        attachment = await ports.attach(neutron, binders, network_id=network.id,
                                        netns=make_netns(), ifname="eth0",
                                        host=cloud_config.binding.host, tags=[TEST_TAG])
        await neutron.update_port(attachment.port.id, security_group_ids=[group.id])
        made = await asyncio.to_thread(_neutron, "POST", "floatingips", {"floatingip": {
            "floating_network_id": cloud_config.kubernetes.external_svc_net,
            "port_id": attachment.port.id}})
        floating = made["floatingip"]["id"]
        address = made["floatingip"]["floating_ip_address"]
        assert peers.ping_eventually(layout.OUTSIDE_NETNS, address, expect=True), address
    finally:
        if floating is not None:
            await asyncio.to_thread(_neutron, "DELETE", f"floatingips/{floating}")
        if attachment is not None:
            await ports.detach(neutron, binders, port_id=attachment.port.id,
                               netns=attachment.netns, ifname="eth0")
        await asyncio.to_thread(_neutron, "PUT", f"routers/{router}/remove_router_interface",
                                {"subnet_id": subnet.id})
        await neutron.delete_security_group(group.id)


def test_a_stale_pidfile_never_signals_an_unrelated_process(tmp_path: pathlib.Path) -> None:
    """After a reboot a pidfile may name a pid now used by something else: leave it alone."""
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stale = layout.CloudLayout(tmp_path / "state")
        for service in services.catalog(stale):
            service.pidfile.parent.mkdir(parents=True, exist_ok=True)
            service.pidfile.write_text(f"{unrelated.pid}\n")
            assert services.running_pid(service) is None
            assert not services.state(service).running
            assert services.stop(service) is False
            assert unrelated.poll() is None, f"stop({service.name}) signalled an unrelated pid"
    finally:
        unrelated.kill()
        unrelated.wait()
