"""The local cloud's daemons, tracked by pidfile: what each one runs, and starting, checking and
stopping them.

Owns the command line of every daemon (``catalog``, in start order) and process control. Each
daemon runs in its own session (``start_new_session``) with its output in its own log. A pid
counts as the service only while ``/proc/<pid>/cmdline`` still names it, so a stale pidfile
(after a crash or a reboot) never leads to signalling an unrelated process. Does not wait for
readiness (``probing``) nor create databases (``provisioning``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import time

from kuryr.cloud import commands, layout

# Popen objects of the daemons this process started: kept so that they are reaped (no zombie
# is mistaken for a live daemon) and so that Popen does not warn about them when collected.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclasses.dataclass(frozen=True)
class Service:
    """One daemon of the local cloud."""

    name: str
    argv: tuple[str, ...]
    pidfile: pathlib.Path
    log: pathlib.Path
    # Substrings that /proc/<pid>/cmdline of the daemon itself always contains.
    signature: tuple[str, ...]
    # Substrings enough for a process in the daemon's own process group (forked workers,
    # which may have retitled themselves).
    member_signature: tuple[str, ...]
    writes_pidfile: bool = False
    env: tuple[tuple[str, str], ...] = ()
    cwd: pathlib.Path | None = None
    stop_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class ServiceState:
    """What ``state`` found for one service."""

    name: str
    pid: int | None
    running: bool
    detail: str


def catalog(cloud: layout.CloudLayout) -> tuple[Service, ...]:
    """Every daemon of the cloud, in start order (stop in reverse)."""
    quiet = ("-vconsole:info", "-vsyslog:off")
    ovs_run, ovn_run = cloud.ovs_run_dir, cloud.ovn_run_dir
    tools = tuple(cloud.tool_environment().items())
    neutron_env = (*tools, ("ASGI_WORKERS", "1"),
                   ("OS_NEUTRON_CONFIG_DIR", str(cloud.neutron_dir)),
                   ("OS_NEUTRON_CONFIG_FILES", f"{cloud.neutron_conf.name};{cloud.ml2_conf.name}"),
                   ("TMPDIR", str(cloud.neutron_tmp_dir)))
    neutron_configs = ("--config-file", str(cloud.neutron_conf),
                       "--config-file", str(cloud.ml2_conf))
    api_title = f"kuryr-neutron-api@{cloud.neutron_dir}"
    octavia_title = f"kuryr-octavia-api@{cloud.octavia_dir}"

    def ovsdb(name: str, db: pathlib.Path, socket: pathlib.Path, pidfile: pathlib.Path,
              *extra: str) -> Service:
        return Service(
            name=name,
            argv=("ovsdb-server", str(db), f"--remote=punix:{socket}", f"--pidfile={pidfile}",
                  *extra, *quiet),
            pidfile=pidfile, log=cloud.log(name), signature=("ovsdb-server", str(db)),
            member_signature=("ovsdb-server", str(db)), writes_pidfile=True, env=tools)

    return (
        ovsdb("ovsdb-server", cloud.ovs_db, cloud.ovs_socket, ovs_run / "ovsdb-server.pid",
              "--remote=db:Open_vSwitch,Open_vSwitch,manager_options"),
        Service(
            name="ovs-vswitchd",
            # --monitor: restarted at once if it crashes (Open vSwitch 3.1.0's userspace
            # conntrack can abort on an assertion: provisioning.disable_zero_snat).
            argv=("ovs-vswitchd", cloud.ovsdb_connection, "--monitor",
                  f"--pidfile={ovs_run / 'ovs-vswitchd.pid'}", *quiet),
            pidfile=ovs_run / "ovs-vswitchd.pid", log=cloud.log("ovs-vswitchd"),
            signature=("ovs-vswitchd", str(cloud.ovs_socket)),
            member_signature=("ovs-vswitchd",), writes_pidfile=True, env=tools),
        ovsdb("ovn-nb-db", cloud.ovn_nb_db, cloud.ovn_nb_socket, ovn_run / "ovnnb_db.pid",
              f"--unixctl={ovn_run / 'ovnnb_db.ctl'}"),
        ovsdb("ovn-sb-db", cloud.ovn_sb_db, cloud.ovn_sb_socket, ovn_run / "ovnsb_db.pid",
              f"--unixctl={ovn_run / 'ovnsb_db.ctl'}"),
        Service(
            name="ovn-northd",
            argv=("ovn-northd", f"--ovnnb-db=unix:{cloud.ovn_nb_socket}",
                  f"--ovnsb-db=unix:{cloud.ovn_sb_socket}",
                  f"--pidfile={ovn_run / 'ovn-northd.pid'}", *quiet),
            pidfile=ovn_run / "ovn-northd.pid", log=cloud.log("ovn-northd"),
            signature=("ovn-northd", str(cloud.ovn_nb_socket)),
            member_signature=("ovn-northd",), writes_pidfile=True, env=tools),
        Service(
            name="ovn-controller",
            argv=("ovn-controller", cloud.ovsdb_connection,
                  f"--pidfile={ovn_run / 'ovn-controller.pid'}", *quiet),
            pidfile=ovn_run / "ovn-controller.pid", log=cloud.log("ovn-controller"),
            signature=("ovn-controller", str(cloud.ovs_socket)),
            member_signature=("ovn-controller",), writes_pidfile=True, env=tools),
        Service(
            name="mariadb",
            argv=(mariadbd(), "--no-defaults", "--user=root", f"--datadir={cloud.mysql_dir}",
                  f"--socket={cloud.mysql_socket}", f"--port={layout.MARIADB_PORT}",
                  f"--bind-address={layout.MARIADB_HOST}",
                  f"--pid-file={cloud.mysql_own_pidfile}", "--skip-name-resolve",
                  "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                  "--innodb-buffer-pool-size=64M", "--max-connections=500"),
            pidfile=cloud.pidfile("mariadb"), log=cloud.log("mariadb"),
            signature=("mariadbd", f"--datadir={cloud.mysql_dir}"),
            member_signature=("mariadbd",), stop_timeout=60.0),
        Service(
            name="neutron-api",
            argv=(str(cloud.venv_bin / "gunicorn"), "--workers", "1", "--threads", "4",
                  "--bind", f"{layout.NEUTRON_API_HOST}:{layout.NEUTRON_API_PORT}",
                  "--graceful-timeout", "2", "--timeout", "300", "--name", api_title,
                  "--chdir", str(cloud.neutron_dir), f"{cloud.wsgi_module}:application"),
            pidfile=cloud.pidfile("neutron-api"), log=cloud.log("neutron-api"),
            signature=("gunicorn", api_title), member_signature=("gunicorn", api_title),
            env=neutron_env, cwd=cloud.neutron_dir, stop_timeout=15.0),
        Service(
            name="neutron-ovn-maintenance-worker",
            argv=(str(cloud.venv_bin / "neutron-ovn-maintenance-worker"), *neutron_configs),
            pidfile=cloud.pidfile("neutron-ovn-maintenance-worker"),
            log=cloud.log("neutron-ovn-maintenance-worker"),
            signature=("neutron-ovn-maintenance-worker", str(cloud.neutron_conf)),
            member_signature=("neutron-ovn-maintenance-worker",), env=neutron_env,
            cwd=cloud.neutron_dir, stop_timeout=15.0),
        # Octavia's driver agent must run before its API (octavia.md).
        Service(
            name="octavia-driver-agent",
            argv=(str(cloud.octavia_venv_python), str(cloud.octavia_agent_wrapper),
                  "--config-file", str(cloud.octavia_conf)),
            pidfile=cloud.pidfile("octavia-driver-agent"), log=cloud.log("octavia-driver-agent"),
            signature=(str(cloud.octavia_agent_wrapper), str(cloud.octavia_conf)),
            # Its listeners, their request handlers and the provider agent retitle
            # themselves "octavia-driver-agent - <role>".
            member_signature=("octavia-driver-agent",), env=tools,
            cwd=cloud.octavia_dir, stop_timeout=15.0),
        Service(
            name="octavia-api",
            argv=(str(cloud.octavia_venv_bin / "gunicorn"), "--workers", "1",
                  "--worker-class", "gthread", "--threads", "4",
                  "--bind", f"{layout.OCTAVIA_API_HOST}:{layout.OCTAVIA_API_PORT}",
                  "--graceful-timeout", "2", "--timeout", "300", "--name", octavia_title,
                  "--chdir", str(cloud.octavia_dir), f"{cloud.octavia_wsgi_module}:application"),
            pidfile=cloud.pidfile("octavia-api"), log=cloud.log("octavia-api"),
            signature=("gunicorn", octavia_title), member_signature=("gunicorn", octavia_title),
            env=tools, cwd=cloud.octavia_dir, stop_timeout=15.0),
    )


def mariadbd() -> str:
    """The MariaDB server binary (in /usr/sbin, which a non-login PATH may lack)."""
    for name in ("mariadbd", "mysqld"):
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    return "/usr/sbin/mariadbd"


def read_pid(pidfile: pathlib.Path) -> int | None:
    try:
        text = pidfile.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, words joined by spaces ('' when gone or a zombie).

    Right after exec the kernel shows an empty command line for a few milliseconds: a live
    process with an empty one is asked again (kernel threads stay empty, for at most 0.1 s).
    """
    for _ in range(50):
        child = _children.get(pid)
        if child is not None and child.poll() is not None:
            del _children[pid]
            return ""
        try:
            raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if _process_state(pid) in ("", "Z", "X"):
            return ""
        time.sleep(0.002)
    return ""


def _process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc ('' when it is gone)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else ""


def _matches(pid: int, signature: tuple[str, ...]) -> bool:
    line = cmdline(pid)
    return bool(line) and all(part in line for part in signature)


def running_pid(service: Service) -> int | None:
    """The pid of the service when its pidfile names a live process that is the service."""
    pid = read_pid(service.pidfile)
    return pid if pid is not None and _matches(pid, service.signature) else None


def state(service: Service) -> ServiceState:
    pid = read_pid(service.pidfile)
    if pid is None:
        return ServiceState(service.name, None, False, "no pidfile")
    if _matches(pid, service.signature):
        return ServiceState(service.name, pid, True, f"pid {pid}")
    return ServiceState(service.name, pid, False,
                        f"stale pidfile (pid {pid} is not {service.name})")


def _group_members(pgid: int, signature: tuple[str, ...]) -> list[int]:
    """Live processes of process group ``pgid`` whose command line matches ``signature``."""
    members = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        # Fields after the command name (which may contain spaces) in parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pid = int(entry.name)
            if _matches(pid, signature):
                members.append(pid)
    return members


def _targets(service: Service) -> list[int]:
    """Every process that belongs to the service: the daemon and its forked workers, also
    workers left behind by a daemon that was killed (its pid is their process group)."""
    pid = read_pid(service.pidfile)
    if pid is None:
        return []
    targets = [pid] if _matches(pid, service.signature) else []
    targets += [m for m in _group_members(pid, service.member_signature) if m != pid]
    return targets


def start(service: Service, *, timeout: float = 10.0) -> int:
    """Start the service's daemon in its own session and return its pid.

    Leftover workers of an earlier, killed instance are stopped first. Raises CloudError when
    the daemon cannot be started or exits before its pidfile appears.
    """
    stop(service)
    commands.header(service.log, service.argv)
    env = commands.child_environment(dict(service.env))
    try:
        with service.log.open("ab") as out:
            process = subprocess.Popen(
                service.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=service.cwd or "/", start_new_session=True, close_fds=True)
    except OSError as e:
        raise commands.failure(f"starting {service.name}", str(e), service.log) from e
    _children[process.pid] = process
    if not service.writes_pidfile:
        _write_pidfile(service.pidfile, process.pid)
        return process.pid
    deadline = time.monotonic() + timeout
    # A daemon under its own --monitor writes the pid of its monitored child.
    while (found := read_pid(service.pidfile)) is None or process.pid not in (
            found, _parent_of(found)):
        if process.poll() is not None:
            raise commands.failure(f"starting {service.name}",
                                   f"it exited with code {process.returncode}", service.log)
        if time.monotonic() > deadline:
            raise commands.failure(f"starting {service.name}",
                                   f"no pidfile {service.pidfile} after {timeout:.0f} s",
                                   service.log)
        time.sleep(0.01)
    return found


def _parent_of(pid: int) -> int | None:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def check_alive(service: Service, pid: int, *, step: str) -> None:
    """Raise CloudError naming ``step`` when the daemon ``pid`` has exited."""
    if not _matches(pid, service.signature):
        raise commands.failure(step, f"{service.name} (pid {pid}) exited", service.log)


def stop(service: Service) -> bool:
    """Stop the service by the pid in its pidfile: SIGTERM, wait, then SIGKILL.

    True when something was running. Processes whose command line does not name the
    service are never signalled.
    """
    targets = _targets(service)
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + service.stop_timeout
    alive = targets
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _matches(pid, service.member_signature)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if _matches(pid, service.member_signature)]
    service.pidfile.unlink(missing_ok=True)
    return bool(targets)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _write_pidfile(pidfile: pathlib.Path, pid: int) -> None:
    tmp = pidfile.with_name(f".{pidfile.name}.tmp")
    tmp.write_text(f"{pid}\n", encoding="ascii")
    os.replace(tmp, pidfile)
