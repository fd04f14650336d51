"""containerd (``ctr run --cni``) with a kuryr network on the local cloud: two containers get
Neutron ports and ping each other; when they exit, containerd's DEL (which comes with an empty
CNI_NETNS) leaves no Neutron port, veth or OVS port behind.

``ctr run --cni`` reads the first conflist of /etc/cni/net.d and plugins from /opt/cni/bin: the
test puts a uniquely named conflist there (sorted first) and removes it afterwards."""

from __future__ import annotations

import asyncio
import functools
import pathlib
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator

import pytest

from kuryr.binding import ovs as ovs_binding
from kuryr.cli import install_cni
from kuryr.daemon import standalone
from kuryr.linux import interfaces
from kuryr.neutron import client, resources, tagging
from tests.conftest import RUN_ID
from tests.support import cni

SYSTEM_CONF_DIR = pathlib.Path("/etc/cni/net.d")
SYSTEM_BIN_DIR = pathlib.Path("/opt/cni/bin")


class Containerd:
    """A standalone containerd (own root, state and socket; CRI off), stopped by PID."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.address = str(base / "containerd.sock")
        config = base / "config.toml"
        config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        self.log = (base / "containerd.log").open("wb")
        self.process = subprocess.Popen(
            ["containerd", "--config", str(config), "--root", str(base / "root"), "--state",
             str(base / "state"), "--address", self.address], stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("containerd did not start")
            time.sleep(0.1)

    def ctr(self, *argv: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ctr", "--address", self.address, *argv], capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(argv)} failed: {done.stderr}")
        return done

    def run_cni(self, rootfs: pathlib.Path, container: str,
                *argv: str) -> subprocess.Popen[bytes]:
        """``ctr run --rm --cni`` in the foreground (it calls DEL when the task exits)."""
        return subprocess.Popen(
            ["ctr", "--address", self.address, "run", "--rm", "--cni", "--env", "PATH=/bin",
             "--rootfs", str(rootfs), container, *argv], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def containerd(runtime_packages: None,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    runtime = Containerd(tmp_path_factory.mktemp("containerd"))
    yield runtime
    runtime.stop()


@pytest.fixture
def system_cni(runtime_daemon: cni.DaemonProcess, runtime_net: resources.Network,
               runtime_packages: None) -> Iterator[str]:
    """The kuryr executable in /opt/cni/bin and a conflist sorted first in /etc/cni/net.d."""
    install_cni.install_executable(SYSTEM_BIN_DIR)
    for plugin in ("loopback", "portmap"):
        if not (SYSTEM_BIN_DIR / plugin).exists():
            (SYSTEM_BIN_DIR / plugin).symlink_to(f"/usr/lib/cni/{plugin}")
    name = f"kuryr-ctr-{RUN_ID}"
    written = install_cni.write_conflist(SYSTEM_CONF_DIR, install_cni.conflist(
        name=name, network=runtime_net.name, daemon_socket=runtime_daemon.socket), priority=0)
    try:
        yield name
    finally:
        written.unlink(missing_ok=True)


def cni_id(container: str) -> str:
    """ctr passes CNI_CONTAINERID as <containerd namespace>-<container id>."""
    return f"default-{container}"


def rootfs(tarball: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    target.mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="tar")
    return target


async def test_ctr_run_cni_containers_on_neutron_ports(
        containerd: Containerd, system_cni: str, rootfs_tarball: pathlib.Path,
        runtime_neutron: client.Neutron, tmp_path: pathlib.Path, cloud_config: object) -> None:
    ids = [f"kt-{RUN_ID}-ctr-a", f"kt-{RUN_ID}-ctr-b"]
    runs = []
    try:
        for cid in ids:
            runs.append(containerd.run_cni(rootfs(rootfs_tarball, tmp_path / cid), cid,
                                           "sleep", "120"))
        ports: list[resources.Port] = []
        deadline = time.monotonic() + 60
        for cid in ids:
            found: list[resources.Port] = []
            # The port exists (tagged) before ADD has plugged it: wait for ACTIVE.
            while not (found and found[0].status == "ACTIVE") and time.monotonic() < deadline:
                found = await runtime_neutron.list_ports(
                    tags=[tagging.owner(standalone.TAG_CONTAINER, cni_id(cid))])
                await asyncio.sleep(0.2)
            assert found, f"no Neutron port for {cid}"
            ports.append(found[0])
        ips = [p.fixed_ips[0].ip_address for p in ports]
        assert all(p.status == "ACTIVE" for p in ports)
        for src, dst in ((0, 1), (1, 0)):
            done = await asyncio.to_thread(containerd.ctr, "task", "exec", "--exec-id",
                                           f"ping{src}", ids[src], "ping", "-c", "2", "-W", "2",
                                           ips[dst], check=False)
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        for cid in ids:
            await asyncio.to_thread(containerd.ctr, "task", "kill", "-s", "KILL", cid,
                                    check=False)
        for run in runs:
            try:
                await asyncio.to_thread(run.wait, 60)
            except subprocess.TimeoutExpired:
                run.kill()
        for cid in ids:
            await asyncio.to_thread(containerd.ctr, "container", "rm", cid, check=False)
            shutil.rmtree(tmp_path / cid, ignore_errors=True)

    binder = ovs_binding.OvsBinder(cloud_config.binding)  # type: ignore[attr-defined]
    try:
        for cid, port in zip(ids, ports, strict=True):
            assert await cni.released(functools.partial(
                runtime_neutron.list_ports,
                tags=[tagging.owner(standalone.TAG_CONTAINER, cni_id(cid))])) == []
            tap = ovs_binding.host_ifname(port.id)
            assert not await asyncio.to_thread(interfaces.link_exists, tap)
            assert await asyncio.to_thread(binder.ovsdb.port_external_ids, tap) is None
    finally:
        binder.close()
