"""A private Docker engine and a kuryr libnetwork driver, for tests and benchmarks.

``Dockerd`` runs ``dockerd`` with its own data root, exec root and API socket under a temporary
directory (no iptables, no docker0, live restore on), started in the background and stopped by
PID. ``Driver`` runs ``kuryr libnetwork`` on its own plugin socket (so its driver name is unique
and never clashes with a kuryr the machine runs). ``import_busybox`` makes an image from the
busybox-static binary, without any registry.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import time

from tests.support import processes

PLUGIN_DIR = pathlib.Path("/run/docker/plugins")
DOCKER_CLIENT = "/usr/bin/docker"  # the packaged client matches the packaged engine
PACKAGES = ("docker.io", "busybox-static")
IMAGE = "kuryr-test-busybox:latest"


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
        text=True).stdout.find("ok installed") < 0]


def install_packages() -> str | None:
    """Install docker.io and busybox-static with apt if missing; the failure text, if any."""
    need = missing_packages()
    if not need:
        return None
    if not shutil.which("apt-get"):
        return f"{', '.join(need)} missing and no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *need], capture_output=True,
                          text=True, env=env, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *need], capture_output=True,
                              text=True, env=env, timeout=600)
    return None if done.returncode == 0 else done.stderr[-2000:]


def _wait_for(check: object, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:g} s")
        time.sleep(0.05)


class Dockerd:
    """One dockerd of our own; ``docker(...)`` runs the client against it."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = ["dockerd", "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "-H", self.host,
                "--pidfile", str(self.root / "dockerd.pid"), "--iptables=false",
                "--ip6tables=false", "--bridge=none", "--live-restore"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log,
                                            start_new_session=True)
        _wait_for(lambda: self.docker("version", check=False).returncode == 0
                  or self.process is None or self.process.poll() is not None,
                  timeout=30, what="dockerd")
        if self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop our dockerd by PID (containers keep running: live restore)."""
        processes.stop(self.process, timeout=30)
        self.process = None

    def unmount(self) -> None:
        """After the last stop: undo the mounts dockerd leaves under its root (it bind-mounts
        its data root onto itself), deepest first."""
        root = str(self.root.resolve())
        with open("/proc/self/mounts", encoding="utf-8") as f:
            points = [line.split()[1] for line in f]
        for point in sorted((p for p in points if p == root or p.startswith(root + "/")),
                            key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    def docker(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([DOCKER_CLIENT, "-H", self.host, *args], capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stderr.strip()}")
        return done

    def inspect(self, name: str) -> dict[str, object]:
        data: list[dict[str, object]] = json.loads(self.docker("inspect", name).stdout)
        return data[0]

    def remove_everything(self, *, patience: float = 60) -> bool:
        """Remove every container and network of this dockerd (end of a session), trying again
        for ``patience`` seconds while a driver fails (e.g. Neutron restarting), so nothing is
        left in Neutron. Whether everything went."""
        deadline = time.monotonic() + patience
        while True:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            nets = self.docker("network", "ls", "-q", "--filter", "type=custom",
                               check=False).stdout.split()
            if nets:
                self.docker("network", "rm", *nets, check=False)
            elif not ids:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(3)


def import_busybox(dockerd: Dockerd, workdir: pathlib.Path) -> str:
    """An image holding busybox-static and its applet links, imported without a registry."""
    tarball = workdir / "busybox.tar"
    busybox = "/bin/busybox"
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(tarball, "w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox" or "/" in applet:
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    dockerd.docker("import", "-c", "ENV PATH=/bin", str(tarball), IMAGE)
    return IMAGE


class Driver:
    """``kuryr libnetwork`` as Docker sees it: a process serving ``/run/docker/plugins/<name>
    .sock``; stopped by PID."""

    def __init__(self, name: str, *, config: str, log: pathlib.Path) -> None:
        self.name = name
        self.config = config
        self.socket = PLUGIN_DIR / f"{name}.sock"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> None:
        environ = {**os.environ, "KURYR_CONFIG": self.config,
                   "KURYR_LIBNETWORK_SOCKET_PATH": str(self.socket), **env}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kuryr", "--debug", "libnetwork"], stdout=log,
                stderr=log, env=environ, start_new_session=True)
        _wait_for(lambda: self.socket.exists() or self.process is None
                  or self.process.poll() is not None, timeout=30, what="kuryr libnetwork")
        if self.process.poll() is not None:
            raise RuntimeError(f"kuryr libnetwork exited: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        processes.stop(self.process, timeout=15)
        self.process = None
        self.socket.unlink(missing_ok=True)
