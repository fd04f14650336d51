"""Bringing the local cloud up and down, reporting its status, and the shell environment that
points clients at it.

Owns the order of things: install, render, start what is not running (restarting what depends
on something restarted), wait until the Neutron API lists this host's OVN Controller agent
alive, make the external network and the outside namespace, raise the project's quotas (once),
and wait until Octavia lists the OVN provider. ``up`` on a healthy cloud returns after one look
at the pidfiles and two HTTP requests (and the quotas' marker);
after a crash or a reboot it starts what is dead. ``up`` and ``down`` hold a lock in the state
directory so that two of them never interleave.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import os
import pathlib
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator

import yaml

from kuryr import settings
from kuryr.cloud import (
    CloudError,
    commands,
    external,
    installing,
    layout,
    probing,
    provisioning,
    rendering,
    services,
)

Progress = Callable[[str], None]
READY_TIMEOUT = 60.0
# Seconds to wait for ovn-controller's Datapath row (``provisioning.disable_zero_snat``).
ZERO_SNAT_WAIT = 15.0
# How long a Neutron that was already running may take to become healthy before it is
# restarted (it answers within seconds when it is well).
RUNNING_NEUTRON_GRACE = 20.0
# The same for an Octavia API that was already running.
RUNNING_OCTAVIA_GRACE = 20.0
SOCKET_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class CloudStatus:
    """Every service's process state, what the Neutron and Octavia APIs said, and whether
    the outside namespace is in place."""

    services: tuple[services.ServiceState, ...]
    api: probing.ApiHealth
    octavia: probing.OctaviaHealth
    outside: external.OutsideState

    @property
    def healthy(self) -> bool:
        return (all(s.running for s in self.services) and self.api.healthy
                and self.octavia.healthy and self.outside.present)


def _quiet(_: str) -> None:
    pass


def status(cloud: layout.CloudLayout) -> CloudStatus:
    """Look at every service's pidfile, ask Neutron for its agents and Octavia for its
    providers, look at the outside namespace. Raises nothing."""
    states = tuple(services.state(s) for s in services.catalog(cloud))
    return CloudStatus(states, probing.api_health(host=rendering.host_name()),
                       probing.octavia_health(), external.outside_state())


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
            if provisioning.disable_zero_snat(cloud):
                progress("zero SNAT turned off for OVN's commits (ovs-vswitchd had restarted)")
            _ensure_quotas(cloud, progress)
            progress("the local cloud is already up")
            return status(cloud)
        _bring_up(cloud, catalog, progress)
        result = status(cloud)
        if not result.healthy:
            raise CloudError(f"the local cloud is not healthy after up: {result.api.detail}")
        progress("the local cloud is up")
        return result


def _is_up(cloud: layout.CloudLayout, catalog: dict[str, services.Service]) -> bool:
    """The fast path: every daemon alive, configs current, the outside namespace there, the
    agent alive and Octavia listing the OVN provider."""
    if not all(services.running_pid(s) for s in catalog.values()):
        return False
    if not installing.venvs_are_current(cloud) or not rendering.is_current(cloud):
        return False
    if rendering.external_network_id(cloud) is None or not external.outside_state().present:
        return False
    return (probing.api_health(host=rendering.host_name()).healthy
            and probing.octavia_health().healthy)


class _Starter:
    """Starts services of the catalog that are not running and remembers which it started."""

    def __init__(self, catalog: dict[str, services.Service], progress: Progress) -> None:
        self.catalog = catalog
        self.progress = progress
        self.started: set[str] = set()

    def ensure(self, name: str, before: Callable[[], None] | None = None,
               sockets: tuple[pathlib.Path, ...] = ()) -> bool:
        """Start ``name`` unless it runs; wait for its ``sockets``; True when started now."""
        service = self.catalog[name]
        if services.running_pid(service):
            return False
        if before is not None:
            before()
        if name == "ovs-vswitchd":
            _refuse_foreign_switch(service)
        pid = services.start(service)
        self.started.add(name)
        self.progress(f"started {name} (pid {pid})")
        for socket in sockets:
            probing.wait_for(f"starting {name}", functools.partial(probing.socket_accepts, socket),
                             timeout=SOCKET_TIMEOUT, log=service.log,
                             alive=lambda: services.check_alive(service, pid,
                                                                step=f"starting {name}"))
        return True


def _bring_up(cloud: layout.CloudLayout, catalog: dict[str, services.Service],
              progress: Progress) -> None:
    for directory in cloud.directories():
        directory.mkdir(parents=True, exist_ok=True)
    installing.ensure_packages(cloud, progress=progress)
    reinstalled = installing.ensure_venvs(cloud, progress=progress)
    rendered = rendering.render(cloud)
    starter = _Starter(catalog, progress)
    ensure = starter.ensure

    ensure("ovsdb-server", sockets=(cloud.ovs_socket,),
           before=lambda: provisioning.ensure_ovsdb_file(cloud, cloud.ovs_db,
                                                         provisioning.VSWITCH_SCHEMA))
    provisioning.configure_switch(cloud)
    external.ensure_bridge_mappings(cloud)
    ensure("ovs-vswitchd")
    nb = ensure("ovn-nb-db", sockets=(cloud.ovn_nb_socket,),
                before=lambda: provisioning.ensure_ovsdb_file(cloud, cloud.ovn_nb_db,
                                                              provisioning.OVN_NB_SCHEMA))
    sb = ensure("ovn-sb-db", sockets=(cloud.ovn_sb_socket,),
                before=lambda: provisioning.ensure_ovsdb_file(cloud, cloud.ovn_sb_db,
                                                              provisioning.OVN_SB_SCHEMA))
    if nb or sb:
        provisioning.init_ovn_databases(cloud)
    ensure("ovn-northd")
    ensure("ovn-controller")
    provisioning.disable_zero_snat(cloud, wait=ZERO_SNAT_WAIT)
    if ensure("mariadb", sockets=(cloud.mysql_socket,),
              before=lambda: provisioning.ensure_mariadb_datadir(cloud, progress=progress)):
        provisioning.ensure_neutron_database(cloud)
        provisioning.ensure_octavia_database(cloud)
    provisioning.ensure_neutron_schema(cloud, progress=progress)

    neutron = (catalog["neutron-api"], catalog["neutron-ovn-maintenance-worker"])
    # Neutron keeps answering 500 after its database restarted under it; new code or new
    # configuration also needs a restart.
    if "Neutron" in reinstalled or rendered.neutron_changed or "mariadb" in starter.started:
        _stop(neutron, progress)
    for service in neutron:
        ensure(service.name, before=_clear_neutron_tmp(cloud) if service is neutron[0] else None)
    # Octavia starts while Neutron gets ready: it needs Neutron only for requests.
    octavia_restart = ("Octavia" in reinstalled or rendered.octavia_changed
                       or "mariadb" in starter.started)
    _start_octavia(cloud, starter, restart=octavia_restart)
    fresh = "neutron-api" in starter.started
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
    network = external.ensure_network(cloud)
    if external.ensure_outside(cloud):
        progress(f"made the outside namespace {layout.OUTSIDE_NETNS} on {external.GATEWAY}")
    rendering.render(cloud)  # kuryr.conf names the external network now
    progress(f"external network {external.NETWORK_NAME}: {network}")
    _ensure_quotas(cloud, progress)
    _wait_octavia(cloud, starter)


def _ensure_quotas(cloud: layout.CloudLayout, progress: Progress) -> None:
    raised = provisioning.ensure_quotas(cloud)
    if raised:
        progress(f"raised the quotas of {provisioning.PROJECT_ID}: " +
                 ", ".join(f"{name} {limit}" for name, limit in raised.items()))


def _start_octavia(cloud: layout.CloudLayout, starter: _Starter, *, restart: bool) -> None:
    """Octavia's database and schema once, then the driver agent and only then the API (an
    API started without the agent serves no provider until restarted)."""
    catalog, progress = starter.catalog, starter.progress
    octavia = (catalog["octavia-driver-agent"], catalog["octavia-api"])
    if restart:
        _stop(tuple(reversed(octavia)), progress)
    if not provisioning.octavia_database_exists(cloud):
        provisioning.ensure_octavia_database(cloud)
    provisioning.ensure_octavia_schema(cloud, progress=progress)
    layout.OCTAVIA_AGENT_RUN_DIR.mkdir(parents=True, exist_ok=True)
    if services.running_pid(octavia[0]) is None:
        _stop((octavia[1],), progress)
    if starter.ensure(octavia[0].name, before=_remove_agent_sockets):
        # Its sockets are looked at, not connected to: a connection closed without a request
        # makes the agent log an error (see rendering's patched driver_listener._recv).
        agent = octavia[0]
        probing.wait_for("starting octavia-driver-agent", _agent_sockets_exist,
                         timeout=SOCKET_TIMEOUT, log=agent.log,
                         alive=lambda: _check_running(agent, "starting octavia-driver-agent"))
    starter.ensure(octavia[1].name)


def _remove_agent_sockets() -> None:
    for path in layout.OCTAVIA_AGENT_SOCKETS:
        path.unlink(missing_ok=True)


def _agent_sockets_exist() -> bool:
    return all(path.is_socket() for path in layout.OCTAVIA_AGENT_SOCKETS)


def _check_running(service: services.Service, step: str) -> None:
    if services.running_pid(service) is None:
        raise commands.failure(step, f"{service.name} exited", service.log)


def _wait_octavia(cloud: layout.CloudLayout, starter: _Starter) -> None:
    """Wait (bounded) until Octavia lists the OVN provider; restart it (agent, then API) once
    when it came up without the provider or was running but is not answering."""
    catalog, progress = starter.catalog, starter.progress
    api = catalog["octavia-api"]
    watched = (catalog["octavia-driver-agent"], api)
    for attempt in (1, 2):
        fresh = api.name in starter.started
        last = _wait_octavia_once(watched, timeout=READY_TIMEOUT if fresh
                                  else RUNNING_OCTAVIA_GRACE)
        if last.healthy:
            progress(last.detail)
            return
        if attempt == 2:
            raise commands.failure("waiting for the Octavia API to list the ovn provider",
                                   last.detail, api.log)
        progress(f"Octavia not healthy ({last.detail}): restarting its driver agent and API")
        starter.started.difference_update(s.name for s in watched)
        _start_octavia(cloud, starter, restart=True)


def _wait_octavia_once(watched: tuple[services.Service, ...], *,
                       timeout: float) -> probing.OctaviaHealth:
    """Poll the providers until they list ovn, or the API answers without it, or the bound;
    the last answer. Raises CloudError when a watched daemon exits."""
    last = [probing.OctaviaHealth(False, (), "not asked yet")]

    def alive() -> None:
        for service in watched:
            if services.running_pid(service) is None:
                raise commands.failure("waiting for the Octavia API",
                                       f"{service.name} exited", service.log)

    def check() -> bool:
        last[0] = probing.octavia_health(timeout=5.0)
        return last[0].answering

    with contextlib.suppress(CloudError):
        probing.wait_for("waiting for the Octavia API to answer", check, timeout=timeout,
                         alive=alive, log=watched[-1].log, interval=0.2)
    alive()
    return last[0]


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
    of those that were running, after removing the outside namespace. ``purge`` also deletes
    all data (Neutron's and Octavia's databases, OVS and OVN databases, logs, generated
    configuration) but keeps the Neutron and Octavia virtualenvs.

    Raises CloudError when not root.
    """
    _require_root("kuryr cloud down")
    if not cloud.state_dir.exists():
        return []
    stopped = []
    with _locked(cloud, progress):
        catalog = services.catalog(cloud)
        switch = [s for s in catalog if s.name in ("ovsdb-server", "ovs-vswitchd")]
        if external.remove_outside(cloud, switch_running=bool(services.running_pid(switch[0]))):
            progress(f"removed the outside namespace {layout.OUTSIDE_NETNS}")
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
            for path in (cloud.clouds_yaml, cloud.kuryr_conf, cloud.db_password_file,
                         cloud.octavia_db_password_file):
                path.unlink(missing_ok=True)
            progress(f"deleted the cloud's data in {cloud.state_dir} (kept {cloud.venv} and "
                     f"{cloud.octavia_venv})")
    return stopped


def env(cloud: layout.CloudLayout) -> str:
    """Shell lines that point openstack clients (Neutron and Octavia), kuryr and ovs-vsctl at
    this cloud."""
    variables = {
        "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml),
        "OS_CLOUD": settings.LOCAL_CLOUD_NAME,
        "KURYR_CONFIG": str(cloud.kuryr_conf),
        **cloud.tool_environment(),
    }
    lines = [f"# Neutron: {layout.NEUTRON_URL}  Octavia (load balancers, ovn provider): "
             f"{layout.OCTAVIA_URL}  outside: ip netns exec {layout.OUTSIDE_NETNS} ..."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    # The `openstack` client installed beside kuryr (pip's extra "openstack", make setup).
    # The PATH written is the caller's with that directory first (once): `eval` runs it in
    # the shell whose environment this process inherited.
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", os.defpath)
    if (os.access(os.path.join(bin_dir, "openstack"), os.X_OK)
            and bin_dir not in path.split(os.pathsep)):
        lines.append(f"export PATH={shlex.quote(bin_dir + os.pathsep + path)}")
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
