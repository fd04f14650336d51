"""``kuryr cloud`` against the real local cloud: status, a fast idempotent up, recovery from
killed daemons, stop and start, the shell environment; and that a stale pidfile never leads
to signalling an unrelated process.

The cloud is shared with the other tests of the run: every test leaves it up and healthy.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from kuryr import settings
from kuryr.cli import cloud as cli_cloud
from kuryr.cloud import layout, lifecycle, services

SERVICES = {"ovsdb-server", "ovs-vswitchd", "ovn-nb-db", "ovn-sb-db", "ovn-northd",
            "ovn-controller", "mariadb", "neutron-api", "neutron-ovn-maintenance-worker"}


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


def test_up_recovers_a_killed_api_and_ovn_controller(cloud: layout.CloudLayout) -> None:
    before = _pids(cloud)
    killed = {name: before[name] for name in ("neutron-api", "ovn-controller")}
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
        assert cloud.kuryr_conf.exists(), "down without --purge keeps the data"
    finally:
        result = lifecycle.up(cloud)
    assert result.healthy, result


def test_env_exports_point_clients_and_ovs_tools_at_the_cloud(
        cloud: layout.CloudLayout) -> None:
    text = lifecycle.env(cloud)
    assert f"export OS_CLIENT_CONFIG_FILE={cloud.clouds_yaml}" in text
    assert f"export OS_CLOUD={settings.LOCAL_CLOUD_NAME}" in text
    assert f"export KURYR_CONFIG={cloud.kuryr_conf}" in text
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
