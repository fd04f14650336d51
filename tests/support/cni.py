"""Driving kuryr's CNI side as a runtime does: a ``kuryr daemon`` process started and stopped by
PID, the installed executable invoked with ``CNI_*`` variables and a configuration on stdin,
and what a container interface leaves on the host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from tests.support import processes

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaemonProcess:
    """``kuryr daemon`` in a subprocess with its own socket, health port and log file."""

    def __init__(self, workdir: pathlib.Path, *, config_file: str | None,
                 env: Mapping[str, str] | None = None, pool: bool = False,
                 mode: str | None = None) -> None:
        self.workdir = workdir
        self.socket = str(workdir / "kuryr-cni.sock")
        self.health_port = free_port()
        self.log = workdir / "daemon.log"
        self.config_file = config_file
        self.env = dict(env or {})
        self.pool = pool
        self.mode = mode
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> None:
        argv = [sys.executable, "-m", "kuryr", "daemon", "--socket", self.socket,
                "--health-port", str(self.health_port), "--pool" if self.pool else "--no-pool"]
        if self.config_file:
            argv += ["--config", self.config_file]
        if self.mode:
            argv += ["--mode", self.mode]
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT / "src")}
        with self.log.open("ab") as log:
            # Its own session: no signal meant for the test run's process group reaches it.
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kuryr daemon exited {self.process.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kuryr daemon not up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        processes.stop(self.process, sig=sig, timeout=30)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@contextlib.contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def netconf(version: str, network: str, *, socket_path: str, name: str = "kuryr-test",
            **extra: Any) -> dict[str, Any]:
    """The configuration a runtime passes on stdin to the kuryr plugin of a conflist."""
    return {"cniVersion": version, "name": name, "type": "kuryr", "network": network,
            "daemonSocket": socket_path, **extra}


def start_add(executable: pathlib.Path, config: Mapping[str, Any], *, container_id: str,
              netns: str, ifname: str = "eth0") -> subprocess.Popen[bytes]:
    """An ADD left running (stdin already written and closed); read its stdout when done."""
    process = subprocess.Popen([str(executable)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": container_id,
                                    "CNI_NETNS": netns, "CNI_IFNAME": ifname,
                                    "CNI_PATH": "/usr/lib/cni"})
    assert process.stdin is not None
    process.stdin.write(json.dumps(config).encode())
    process.stdin.close()
    return process


def invoke(executable: pathlib.Path, command: str, config: Mapping[str, Any] | bytes, *,
           container_id: str = "", netns: str = "", ifname: str = "eth0",
           env: Mapping[str, str] | None = None,
           timeout: float = 120) -> tuple[int, dict[str, Any] | None]:
    """Run the executable as a runtime does; returns (exit code, parsed stdout or None)."""
    variables = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni"}
    if command not in ("VERSION", "STATUS", "GC"):
        variables.update({"CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                          "CNI_IFNAME": ifname, "CNI_ARGS": "IgnoreUnknown=1"})
    variables.update(env or {})
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    done = subprocess.run([str(executable)], input=stdin, capture_output=True, env=variables,
                          timeout=timeout)
    out = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, out


def kubernetes_netconf(socket_path: str, *, version: str = "1.0.0",
                       **extra: Any) -> dict[str, Any]:
    """The configuration of the conflist ``kuryr install-cni --kubernetes`` writes: no Neutron
    network, each pod's KuryrPort names it."""
    return {"cniVersion": version, "name": "kuryr", "type": "kuryr",
            "daemonSocket": socket_path, **extra}


def pod_args(namespace: str, name: str, uid: str, container_id: str) -> str:
    """``CNI_ARGS`` as a kubelet's runtime (containerd, CRI-O) passes them for a pod."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}")


RELEASE_TIMEOUT = 60.0


async def released(list_ports: Callable[[], Awaitable[list[Any]]], *,
                   timeout: float = RELEASE_TIMEOUT) -> list[Any]:
    """What ``list_ports`` returns once it is empty, or at ``timeout``: DEL answers once the
    host side is unplugged and deletes (or recycles) the Neutron port in the background."""
    deadline = time.monotonic() + timeout
    while True:
        found = await list_ports()
        if not found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)
