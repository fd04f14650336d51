"""The main job's containers: Docker and podman containers on the demo's Neutron network.

``up`` starts what the runtimes need, each process in its own session and recorded by PID in
a small state file (``/run/kuryr/demo.json``) before anything else is made: a private dockerd
(unless one answers on ``/var/run/docker.sock``), ``kuryr libnetwork`` as Docker's driver
``kuryr-demo``, ``kuryr daemon`` with ``kuryr install-cni``'s executable and conflist in a
private CNI dir for podman. It imports a busybox image (no registry), adopts the demo network
as a Docker network and a CNI network, runs two containers per runtime and pings between
containers and the demo's sandboxes. ``down`` removes containers, the Docker network, the
image, stops the processes by PID and deletes the work directory. Idempotent.

Everything goes through the runtimes' command lines and kuryr's own CLI as subprocesses: the
entry points (``kuryr.libnetwork``, ``kuryr.daemon``) are never imported here. This module does
not own the demo network or the sandboxes (``kuryr.demo`` does); ports the runtimes leave
behind on the network are ``kuryr.demo``'s to remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from kuryr import errors, settings
from kuryr.neutron import client

RUNTIMES = ("docker", "podman")
PACKAGES = {"docker": ("docker.io", "busybox-static"),
            "podman": ("podman", "runc", "containernetworking-plugins", "busybox-static")}
STATE_FILE = pathlib.Path("/run/kuryr/demo.json")
WORKDIR = pathlib.Path("/var/lib/kuryr/demo")
SYSTEM_DOCKER = "unix:///var/run/docker.sock"
PLUGIN_DIR = pathlib.Path("/run/docker/plugins")
NAME = "kuryr-demo"  # Docker driver and network, CNI network
IMAGE = "localhost/kuryr-demo-busybox:latest"
CONTAINERS = {"docker": ("kuryr-demo-docker-a", "kuryr-demo-docker-b"),
              "podman": ("kuryr-demo-podman-a", "kuryr-demo-podman-b")}
REFERENCE_CNI = pathlib.Path("/usr/lib/cni")
State = dict[str, Any]
Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Container:
    runtime: str
    name: str
    port_id: str
    mac: str
    addresses: tuple[str, ...]
    status: str


@dataclasses.dataclass(frozen=True)
class Ping:
    source: str
    target: str
    ok: bool
    summary: str


def select(requested: str | None) -> tuple[list[str], dict[str, str]]:
    """The runtimes to run and the skipped ones with why, from ``--with`` (comma-separated
    names or ``none``; None: those installed). Raises PermanentError for an unknown name."""
    names = list(RUNTIMES) if requested is None else [
        n.strip() for n in requested.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise errors.PermanentError(f"--with: unknown runtime {', '.join(unknown)} "
                                    f"(choose from {', '.join(RUNTIMES)} or none)")
    chosen, skipped = [], {}
    for name in names:
        missing = [p for p in PACKAGES[name] if not _is_installed(p)]
        if missing:
            skipped[name] = f"package {', '.join(missing)} not installed " \
                            f"(apt-get install {' '.join(missing)})"
        else:
            chosen.append(name)
    return chosen, skipped


async def up(config: settings.KuryrSettings, runtimes: Sequence[str], *, network_id: str,
             cidr: str, sandboxes: Sequence[tuple[str, str]],
             say: Say) -> tuple[list[Container], list[Ping]]:
    """Run ``runtimes``' containers on the network; ``sandboxes`` are (netns, IPv4 address) to
    ping. An earlier demo's containers are removed first; on failure everything made is.
    Raises KuryrError."""
    await asyncio.to_thread(teardown, say=say)
    if not runtimes:
        return [], []
    state: State = {"workdir": str(WORKDIR), "processes": []}
    try:
        members = await asyncio.to_thread(_start, config, state, runtimes, network_id=network_id,
                                          cidr=cidr, say=say)
        containers, ips = await _describe(config, network_id, members)
        pings = await asyncio.gather(*(asyncio.to_thread(_ping, state, s, t, a)
                                       for s, t, a in _pairs(members, ips, sandboxes)))
    except BaseException:
        say("failed: removing what was made")
        await asyncio.to_thread(teardown, say=say)
        raise
    return containers, list(pings)


def teardown(*, say: Say) -> None:
    """Remove what the state file records (containers, Docker network, image, processes by
    PID) and the work directory. Idempotent; never raises for what is already gone."""
    state: State = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
    if "podman" in state:
        say("removing podman containers")
        _podman(state, "rm", "-f", "-t", "0", *CONTAINERS["podman"], check=False)
    docker = state.get("docker")
    if docker and (not docker["private"] or _alive(state, "dockerd")):
        say(f"removing Docker containers and network {NAME}")
        _docker(state, "rm", "-f", *CONTAINERS["docker"], check=False)
        _docker(state, "network", "rm", NAME, check=False)
        if not docker["private"] and docker.get("image"):
            _docker(state, "rmi", IMAGE, check=False)
    for proc in reversed(state.get("processes", [])):
        say(f"stopping {proc['what']} (pid {proc['pid']})")
        _stop(proc)
    (PLUGIN_DIR / f"{NAME}.sock").unlink(missing_ok=True)
    if WORKDIR.exists():
        _unmount_under(WORKDIR)
        shutil.rmtree(WORKDIR, ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)


# -- bring-up -----------------------------------------------------------------------------------
def _start(config: settings.KuryrSettings, state: State, runtimes: Sequence[str], *,
           network_id: str, cidr: str, say: Say) -> list[tuple[str, str]]:
    """Start and run everything; returns (runtime, container) in order."""
    (WORKDIR / "logs").mkdir(parents=True, exist_ok=True)
    _save(state)
    tarball = _rootfs_tarball(WORKDIR / "busybox.tar")
    kuryr = [sys.executable, "-m", "kuryr"]
    conf = ["--config", config.source] if config.source else []
    members: list[tuple[str, str]] = []
    if "docker" in runtimes:
        plugin = PLUGIN_DIR / f"{NAME}.sock"
        PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        plugin.unlink(missing_ok=True)
        say(f"starting kuryr libnetwork (Docker driver {NAME}, {plugin})")
        _spawn(state, "kuryr libnetwork", [*kuryr, "libnetwork", *conf],
               env={"KURYR_LIBNETWORK_SOCKET_PATH": str(plugin)}, ready=plugin.exists)
        private = not _docker_answers(SYSTEM_DOCKER)
        state["docker"] = {"private": private, "host": SYSTEM_DOCKER, "image": False}
        if private:
            root = WORKDIR / "docker"
            host = f"unix://{root / 'docker.sock'}"
            state["docker"]["host"] = host
            say("starting a private dockerd (no system dockerd answers on /var/run/docker.sock)")
            _spawn(state, "dockerd", [
                "dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
                "-H", host, "--pidfile", str(root / "dockerd.pid"), "--iptables=false",
                "--ip6tables=false", "--bridge=none", "--live-restore"],
                ready=lambda: _docker_answers(host))
        else:
            say("using the dockerd on /var/run/docker.sock")
        state["docker"]["image"] = True
        _save(state)
        _docker(state, "import", "-c", "ENV PATH=/bin", str(tarball), IMAGE)
        say(f"docker network create -d {NAME} -o neutron.net.uuid={network_id} --subnet {cidr}")
        _docker(state, "network", "create", "-d", NAME, "--ipam-driver", NAME, "--subnet", cidr,
                "-o", f"neutron.net.uuid={network_id}", NAME)
        for name in CONTAINERS["docker"]:
            say(f"docker run {name}")
            _docker(state, "run", "-d", "--name", name, "--network", NAME, IMAGE,
                    "sleep", "86400")
            members.append(("docker", name))
    if "podman" in runtimes:
        cni = WORKDIR / "cni"
        sock = WORKDIR / "kuryr-cni.sock"
        port = _free_port()
        say(f"starting kuryr daemon ({sock})")
        _spawn(state, "kuryr daemon", [*kuryr, "daemon", *conf, "--socket", str(sock),
                                       "--health-port", str(port), "--no-pool"],
               ready=lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"))
        say(f"kuryr install-cni --bin-dir {cni / 'bin'} --conf-dir {cni / 'net.d'}")
        _run([*kuryr, "install-cni", "--bin-dir", str(cni / "bin"), "--conf-dir",
              str(cni / "net.d"), "--network", network_id, "--name", NAME,
              "--daemon-socket", str(sock)])
        for plugin_path in REFERENCE_CNI.iterdir():
            with contextlib.suppress(FileExistsError):
                (cni / "bin" / plugin_path.name).symlink_to(plugin_path)
        state["podman"] = {"conf": str(_containers_conf(WORKDIR / "podman", cni))}
        _save(state)
        _podman(state, "import", str(tarball), IMAGE)
        for name in CONTAINERS["podman"]:
            say(f"podman run {name}")
            _podman(state, "run", "-d", "--name", name, "--network", NAME, "--cap-add",
                    "NET_RAW", IMAGE, "sleep", "86400")
            members.append(("podman", name))
    return members


def _containers_conf(base: pathlib.Path, cni: pathlib.Path) -> pathlib.Path:
    """podman's settings measured to work here: CNI backend, runc (crun fails on these hybrid
    cgroups), ulimits (no CAP_SYS_RESOURCE to raise them), everything private."""
    base.mkdir(parents=True, exist_ok=True)
    conf = base / "containers.conf"
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{cni / "bin"}"]\n'
        f'network_config_dir = "{cni / "net.d"}"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{base / "tmp"}"\n')
    return conf


def _rootfs_tarball(target: pathlib.Path) -> pathlib.Path:
    """A rootfs of busybox-static and its applet links, to import without a registry."""
    applets = _run(["/bin/busybox", "--list"]).stdout.split()
    with tarfile.open(target, "w") as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add("/bin/busybox", arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    return target


async def _describe(config: settings.KuryrSettings, network_id: str,
                    members: Sequence[tuple[str, str]]
                    ) -> tuple[list[Container], dict[str, str]]:
    """Each container with its Neutron port, found by the IPv4 address the runtime reports;
    and these addresses by container."""
    neutron = client.Neutron.from_settings(config)
    try:
        ports = await neutron.list_ports(network_id=network_id)
    finally:
        neutron.close()
    made, ips = [], {}
    for runtime, name in members:
        ip = ips[name] = await asyncio.to_thread(_ip_of, runtime, name)
        port = next((p for p in ports if any(f.ip_address == ip for f in p.fixed_ips)), None)
        if port is None:
            raise errors.PermanentError(f"{runtime} container {name} has {ip}, but no Neutron "
                                        f"port on network {network_id} has that address")
        made.append(Container(runtime=runtime, name=name, port_id=port.id, mac=port.mac,
                              addresses=tuple(f.ip_address for f in port.fixed_ips),
                              status=port.status))
    return made, ips


def _pairs(members: Sequence[tuple[str, str]], ip: dict[str, str],
           sandboxes: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(source, target name, target address): within each runtime; runtime -> sandbox and
    sandbox -> runtime for Docker (for podman too without Docker); else podman <-> Docker."""
    by = {r: [n for rt, n in members if rt == r] for r in RUNTIMES}
    pairs = []
    for runtime in RUNTIMES:
        if by[runtime]:
            a, b = by[runtime]
            pairs.append((a, b, ip[b]))
            if runtime == "docker" or not by["docker"]:
                pairs.append((a, sandboxes[0][0], sandboxes[0][1]))
                pairs.append((sandboxes[1][0], b, ip[b]))
            else:
                pairs.append((a, by["docker"][0], ip[by["docker"][0]]))
                pairs.append((by["docker"][1], b, ip[b]))
    return pairs


def _ping(state: State, source: str, target: str, address: str) -> Ping:
    if source.startswith("kuryr-demo-docker"):
        argv = _docker_argv(state, "exec", source)
    elif source.startswith("kuryr-demo-podman"):
        argv = _podman_argv(state, "exec", source)
    else:
        argv = ["ip", "netns", "exec", source]
    done = subprocess.run([*argv, "ping", "-c", "3", "-i", "0.2", "-W", "2", address],
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    summary = next((line for line in lines if "packet loss" in line), lines[-1] if lines else "")
    return Ping(source=source, target=f"{target} {address}", ok=done.returncode == 0,
                summary=summary)


def _ip_of(runtime: str, name: str) -> str:
    state: State = json.loads(STATE_FILE.read_text())
    run = _docker if runtime == "docker" else _podman
    networks = json.loads(run(state, "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                              name).stdout)
    return str(networks[NAME]["IPAddress"])


# -- runtimes' command lines --------------------------------------------------------------------
def _docker_argv(state: State, *args: str) -> list[str]:
    client_path = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    return [client_path, "-H", state["docker"]["host"], *args]


def _docker(state: State, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(_docker_argv(state, *args), check=check)


def _podman_argv(state: State, *args: str) -> list[str]:
    base = WORKDIR / "podman"
    return ["env", f"CONTAINERS_CONF={state['podman']['conf']}", "podman", "--root",
            str(base / "root"), "--runroot", str(base / "runroot"), *args]


def _podman(state: State, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(_podman_argv(state, *args), check=check)


def _docker_answers(host: str) -> bool:
    if not os.path.exists(host.removeprefix("unix://")):
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        return _run(["/usr/bin/docker", "-H", host, "version"], check=False,
                    timeout=5).returncode == 0
    return False


def _run(argv: Sequence[str], *, check: bool = True,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Raises PermanentError with the command's own message when ``check`` and it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        command = " ".join(a for a in argv if "=" not in a and not a.startswith("/"))
        raise errors.PermanentError(f"{command[:200]} failed: "
                                    f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return done


def _is_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return True  # not Debian: let the commands themselves say what is missing
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                          text=True)
    return "ok installed" in done.stdout


# -- processes, by PID --------------------------------------------------------------------------
def _spawn(state: State, what: str, argv: list[str], *, ready: Callable[[], bool],
           env: dict[str, str] | None = None, timeout: float = 60) -> None:
    """Start ``argv`` in its own session (the demo's command exits, it stays), record its PID
    in the state file, then wait until ``ready``. Raises PermanentError."""
    log = WORKDIR / "logs" / f"{what.replace(' ', '-')}.log"
    try:
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})},
                                       start_new_session=True)
    except OSError as e:
        raise errors.PermanentError(f"cannot start {what}: {e}") from e
    state["processes"].append({"what": what, "pid": process.pid,
                               "marker": "dockerd" if what == "dockerd" else "kuryr"})
    _save(state)
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise errors.PermanentError(f"{what} did not start; its log {log} ends with:\n"
                                        + log.read_text(errors="replace")[-2000:])
        time.sleep(0.05)


def _alive(state: State, what: str) -> bool:
    return any(p["what"] == what and _is_running(p) for p in state.get("processes", []))


def _is_running(proc: dict[str, Any]) -> bool:
    """Whether the recorded PID is still that process (not a zombie, not a reused PID)."""
    try:
        stat = pathlib.Path(f"/proc/{proc['pid']}/stat").read_text()
        cmdline = pathlib.Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and proc["marker"].encode() in cmdline


def _stop(proc: dict[str, Any], *, timeout: float = 30) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _is_running(proc):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc["pid"], sig)
        deadline = time.monotonic() + timeout
        while _is_running(proc) and time.monotonic() < deadline:
            time.sleep(0.05)


def _save(state: State) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    temp = STATE_FILE.with_suffix(".tmp")
    temp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temp, STATE_FILE)


def _unmount_under(root: pathlib.Path) -> None:
    """dockerd and podman leave mounts under their roots (dockerd bind-mounts its data root
    onto itself): undo them, deepest first."""
    top = str(root.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p == top or p.startswith(top + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
        return True
    return False


def docker_host() -> str:
    """The Docker API the demo's containers are on (``docker -H``)."""
    state: State = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
    return str(state.get("docker", {}).get("host", SYSTEM_DOCKER))
