"""Real container runtimes on the local cloud: their apt packages (installed when missing), a
busybox image made from a rootfs tarball (no registry), the kuryr executable in a CNI bin dir
beside the reference plugins, one kuryr daemon, a Neutron network and a security group that
opens TCP 8080 only."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from kuryr import settings
from kuryr.cli import install_cni
from kuryr.neutron import client, resources
from tests.cloud.conftest import TEST_TAG, remove_network
from tests.conftest import RUN_ID, unavailable
from tests.support import cni

PACKAGES = ("podman", "containerd", "runc", "containernetworking-plugins", "busybox-static")
REFERENCE_PLUGINS = pathlib.Path("/usr/lib/cni")


def _missing(packages: tuple[str, ...]) -> list[str]:
    missing = []
    for package in packages:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                              capture_output=True, text=True)
        if "ok installed" not in done.stdout:
            missing.append(package)
    return missing


@pytest.fixture(scope="session")
def runtime_packages(root: None) -> None:
    missing = _missing(PACKAGES)
    if not missing:
        return
    if not shutil.which("apt-get"):
        unavailable(f"packages {missing} missing and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True,
                          text=True, env=env, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *missing],
                              capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        unavailable(f"cannot install {missing}: {done.stderr[-1000:]}")


@pytest.fixture(scope="session")
def rootfs_tarball(runtime_packages: None,
                   tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A rootfs of busybox-static and its applet links, as a tarball to import."""
    base = tmp_path_factory.mktemp("rootfs")
    tree = base / "tree"
    (tree / "bin").mkdir(parents=True)
    for d in ("etc", "proc", "sys", "dev", "tmp", "run"):
        (tree / d).mkdir()
    shutil.copy2("/bin/busybox", tree / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    tarball = base / "busybox.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tree, arcname=".")
    return tarball


@pytest.fixture(scope="session")
def cni_bin_dir(tmp_path_factory: pytest.TempPathFactory, runtime_packages: None
                ) -> pathlib.Path:
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install_cni.install_executable(bin_dir)
    for plugin in REFERENCE_PLUGINS.iterdir():
        (bin_dir / plugin.name).symlink_to(plugin)
    return bin_dir


@pytest.fixture(scope="session")
def runtime_daemon(cloud_config: settings.KuryrSettings,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[cni.DaemonProcess]:
    with cni.running(cni.DaemonProcess(tmp_path_factory.mktemp("runtime-daemon"),
                                       config_file=cloud_config.source)) as d:
        yield d


@pytest.fixture(scope="session")
async def runtime_neutron(cloud_config: settings.KuryrSettings
                          ) -> AsyncIterator[client.Neutron]:
    made = client.Neutron.from_settings(cloud_config)
    yield made
    made.close()


@pytest.fixture(scope="session")
async def runtime_net(runtime_neutron: client.Neutron, cloud_config: settings.KuryrSettings
                      ) -> AsyncIterator[resources.Network]:
    n = uuid.uuid4().int % 200 + 20
    net = await runtime_neutron.create_network(f"kt-{RUN_ID}-rt-{n}", tags=[TEST_TAG])
    try:
        await runtime_neutron.create_subnet(net.id, cidr=f"10.{n}.{n}.0/24", ip_version=4,
                                            tags=[TEST_TAG])
        yield await runtime_neutron.get_network(net.id)
    finally:
        await remove_network(runtime_neutron, cloud_config, net.id)


@pytest.fixture(scope="session")
async def only_8080(runtime_neutron: client.Neutron) -> AsyncIterator[resources.SecurityGroup]:
    """A security group that lets in TCP 8080 and nothing else."""
    group = await runtime_neutron.create_security_group(f"kt-{RUN_ID}-only8080",
                                                        tags=[TEST_TAG])
    try:
        await runtime_neutron.create_security_group_rule(
            group.id, protocol="tcp", port_range_min=8080, port_range_max=8080,
            remote_ip_prefix="0.0.0.0/0")
        yield group
    finally:
        await runtime_neutron.delete_security_group(group.id)
