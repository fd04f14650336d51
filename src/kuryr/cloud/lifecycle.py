"""Bringing the local cloud up and down, reporting its status, and the shell environment that
points clients at it.

Owns the order of things: install, render, start what is not running (restarting what depends
on something restarted), wait until the Neutron API lists this host's OVN Controller agent
alive. ``up`` on a healthy cloud returns after one look at the pidfiles and one HTTP request;
after a crash or a reboot it starts what is dead. ``up`` and ``down`` hold a lock in the state
directory so that two of them never interleave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import shlex
import shutil
from collections.abc import Callable, Iterator

import yaml

from kuryr import settings
from kuryr.cloud import (
    CloudError,
    commands,
    installing,
    layout,
    probing,
    provisioning,
    rendering,
    services,
)

Progress = Callable[[str], None]
READY_TIMEOUT = 60.0
# How long a Neutron that was already running may take to become healthy before it is
# restarted (it answers within seconds when it is well).
RUNNING_NEUTRON_GRACE = 20.0
SOCKET_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class CloudStatus:
    """Every service's process state and what the Neutron API said."""

    services: tuple[services.ServiceState, ...]
    api: probing.ApiHealth

    @property
    def healthy(self) -> bool:
        return all(s.running for s in self.services) and self.api.healthy


def _quiet(_: str) -> None:
    pass


def status(cloud: layout.CloudLayout) -> CloudStatus:
    """Look at every service's pidfile and ask Neutron for its agents. Raises nothing."""
    states = tuple(services.state(s) for s in services.catalog(cloud))
    return CloudStatus(states, probing.api_health(host=rendering.host_name()))


def up(cloud: layout.CloudLayout, *, progress: Progress = _quiet) -> CloudStatus:
    """Make the local cloud run and be healthy; return its status.

    Installs what is missing (apt packages, Neutron's virtualenv), creates the databases once,
    starts whatever is not running and waits (bounded) for the OVN Controller agent to be
    alive. Raises CloudError naming the failed step and its log.
    """
    _require_root("kuryr cloud up")
    cloud.state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cloud, progress):
        catalog = {s.name: s for s in services.catalog(cloud)}
        if _is_up(cloud, catalog):
            progress("the local cloud is already up")
            return status(cloud)
        _bring_up(cloud, catalog, progress)
        result = status(cloud)
        if not result.healthy:
            raise CloudError(f"the local cloud is not healthy after up: {result.api.detail}")
        progress("the local cloud is up")
        return result


def _is_up(cloud: layout.CloudLayout, catalog: dict[str, services.Service]) -> bool:
    """The fast path: every daemon alive, configs current, and the agent alive."""
    if not all(services.running_pid(s) for s in catalog.values()):
        return False
    if not installing.venv_is_current(cloud) or not rendering.is_current(cloud):
        return False
    return probing.api_health(host=rendering.host_name()).healthy


def _bring_up(cloud: layout.CloudLayout, catalog: dict[str, services.Service],
              progress: Progress) -> None:
    for directory in cloud.directories():
        directory.mkdir(parents=True, exist_ok=True)
    installing.ensure_packages(cloud, progress=progress)
    reinstalled = installing.ensure_venv(cloud, progress=progress)
    rendered = rendering.render(cloud)
    started: set[str] = set()

    def ensure(name: str, before: Callable[[], None] | None = None,
               socket: pathlib.Path | None = None) -> bool:
        service = catalog[name]
        if services.running_pid(service):
            return False
        if before is not None:
            before()
        if name == "ovs-vswitchd":
            _refuse_foreign_switch(service)
        pid = services.start(service)
        started.add(name)
        progress(f"started {name} (pid {pid})")
        if socket is not None:
            probing.wait_for(f"starting {name}", lambda: probing.socket_accepts(socket),
                             timeout=SOCKET_TIMEOUT, log=service.log,
                             alive=lambda: services.check_alive(service, pid,
                                                                step=f"starting {name}"))
        return True

    ensure("ovsdb-server", socket=cloud.ovs_socket, before=lambda: provisioning.ensure_ovsdb_file(
        cloud, cloud.ovs_db, provisioning.VSWITCH_SCHEMA))
    provisioning.configure_switch(cloud)
    ensure("ovs-vswitchd")
    nb = ensure("ovn-nb-db", socket=cloud.ovn_nb_socket,
                before=lambda: provisioning.ensure_ovsdb_file(cloud, cloud.ovn_nb_db,
                                                              provisioning.OVN_NB_SCHEMA))
    sb = ensure("ovn-sb-db", socket=cloud.ovn_sb_socket,
                before=lambda: provisioning.ensure_ovsdb_file(cloud, cloud.ovn_sb_db,
                                                              provisioning.OVN_SB_SCHEMA))
    if nb or sb:
        provisioning.init_ovn_databases(cloud)
    ensure("ovn-northd")
    ensure("ovn-controller")
    if ensure("mariadb", socket=cloud.mysql_socket,
              before=lambda: provisioning.ensure_mariadb_datadir(cloud, progress=progress)):
        provisioning.ensure_neutron_database(cloud)
    provisioning.ensure_neutron_schema(cloud, progress=progress)

    neutron = (catalog["neutron-api"], catalog["neutron-ovn-maintenance-worker"])
    # Neutron keeps answering 500 after its database restarted under it; new code or new
    # configuration also needs a restart.
    if reinstalled or rendered.neutron_changed or "mariadb" in started:
        _stop(neutron, progress)
    for service in neutron:
        ensure(service.name, before=_clear_neutron_tmp(cloud) if service is neutron[0] else None)
    fresh = "neutron-api" in started
    try:
        _wait_healthy(cloud, catalog, progress,
                      timeout=READY_TIMEOUT if fresh else RUNNING_NEUTRON_GRACE)
    except CloudError:
        if fresh:
            raise
        progress("Neutron was running but is not healthy: restarting it")
        _stop(neutron, progress)
        for service in neutron:
            ensure(service.name,
                   before=_clear_neutron_tmp(cloud) if service is neutron[0] else None)
        _wait_healthy(cloud, catalog, progress, timeout=READY_TIMEOUT)


def _wait_healthy(cloud: layout.CloudLayout, catalog: dict[str, services.Service],
                  progress: Progress, *, timeout: float) -> None:
    api = catalog["neutron-api"]
    host = rendering.host_name()
    watched = [catalog[name] for name in ("neutron-api", "neutron-ovn-maintenance-worker",
                                          "ovn-controller", "mariadb")]

    def alive() -> None:
        for service in watched:
            pid = services.running_pid(service)
            if pid is None:
                raise commands.failure("waiting for the Neutron API",
                                       f"{service.name} exited", service.log)

    last: list[probing.ApiHealth] = []

    def check(need_agent: bool) -> bool:
        last[:] = [probing.api_health(host=host, timeout=5.0)]
        return last[0].agent_alive if need_agent else last[0].answering

    try:
        probing.wait_for("waiting for the Neutron API to answer", lambda: check(False),
                         timeout=timeout, alive=alive, log=api.log, interval=0.2)
        progress("Neutron API answering")
        probing.wait_for("waiting for the OVN Controller agent to be alive",
                         lambda: check(True), timeout=timeout, alive=alive, log=api.log,
                         interval=0.2)
    except CloudError as e:
        detail = f" (last answer: {last[0].detail})" if last else ""
        raise CloudError(f"{e}{detail}") from e
    progress(last[0].detail)


def _clear_neutron_tmp(cloud: layout.CloudLayout) -> Callable[[], None]:
    def clear() -> None:
        shutil.rmtree(cloud.neutron_tmp_dir, ignore_errors=True)
        cloud.neutron_tmp_dir.mkdir(parents=True, exist_ok=True)
    return clear


def _stop(to_stop: tuple[services.Service, ...], progress: Progress) -> None:
    for service in to_stop:
        if services.stop(service):
            progress(f"stopped {service.name}")


def _refuse_foreign_switch(ours: services.Service) -> None:
    """The userspace datapath allows one Open vSwitch per machine: never start a second."""
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if comm == "ovs-vswitchd":
            line = services.cmdline(int(entry.name))
            if line and not all(part in line for part in ours.signature):
                raise commands.failure(
                    "starting ovs-vswitchd",
                    f"another Open vSwitch is running (pid {entry.name}: {line}); the "
                    "userspace datapath allows only one per machine, stop it first", None)


def down(cloud: layout.CloudLayout, *, purge: bool = False,
         progress: Progress = _quiet) -> list[str]:
    """Stop every service by the pid in its pidfile, in reverse start order; return the names
    of those that were running. ``purge`` also deletes all data (databases, OVS and OVN
    databases, logs, generated configuration) but keeps Neutron's virtualenv.

    Raises CloudError when not root.
    """
    _require_root("kuryr cloud down")
    if not cloud.state_dir.exists():
        return []
    stopped = []
    with _locked(cloud, progress):
        catalog = services.catalog(cloud)
        switch = [s for s in catalog if s.name in ("ovsdb-server", "ovs-vswitchd")]
        for service in reversed(catalog):
            if purge and service in switch and all(services.running_pid(s) for s in switch):
                # After ovn-controller (which would recreate the bridge) and before
                # ovs-vswitchd stop; best effort: a failure only leaves idle tap devices.
                with contextlib.suppress(CloudError):
                    provisioning.remove_bridge(cloud)
            if services.stop(service):
                stopped.append(service.name)
                progress(f"stopped {service.name}")
        if purge:
            for path in (cloud.data_dir, cloud.run_dir):
                shutil.rmtree(path, ignore_errors=True)
            for path in (cloud.clouds_yaml, cloud.kuryr_conf, cloud.db_password_file):
                path.unlink(missing_ok=True)
            progress(f"deleted the cloud's data in {cloud.state_dir} (kept {cloud.venv})")
    return stopped


def env(cloud: layout.CloudLayout) -> str:
    """Shell lines that point openstack clients, kuryr and ovs-vsctl at this cloud."""
    variables = {
        "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml),
        "OS_CLOUD": settings.LOCAL_CLOUD_NAME,
        "KURYR_CONFIG": str(cloud.kuryr_conf),
        **cloud.tool_environment(),
    }
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    entry = yaml.safe_dump({"clouds": {settings.LOCAL_CLOUD_NAME: rendering.clouds_entry()}},
                           default_flow_style=False, sort_keys=False)
    lines.append(f"# The clouds.yaml entry (in {cloud.clouds_yaml}):")
    lines += [f"#   {line}" for line in entry.splitlines()]
    return "\n".join(lines) + "\n"


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CloudError(f"{what} needs root (Open vSwitch, MariaDB and apt-get run as root)")


@contextlib.contextmanager
def _locked(cloud: layout.CloudLayout, progress: Progress) -> Iterator[None]:
    with open(cloud.lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another 'kuryr cloud up' or 'down' on this state directory")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
