"""podman (CNI backend) with kuryr networks on the local cloud: containers get Neutron ports
and ping each other, a container in a security group that opens TCP 8080 is reachable on that
port only, and ``podman rm`` leaves no Neutron port, veth or OVS port behind."""

from __future__ import annotations

import asyncio
import functools
import json
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from kuryr.binding import ovs as ovs_binding
from kuryr.cli import install_cni
from kuryr.daemon import standalone
from kuryr.linux import interfaces
from kuryr.neutron import client, resources, tagging
from tests.conftest import RUN_ID
from tests.support import cni

IMAGE = f"localhost/kt-busybox-{RUN_ID}"


class Podman:
    """podman with its own storage, CNI config dir and containers.conf."""

    def __init__(self, base: pathlib.Path, bin_dir: pathlib.Path) -> None:
        self.base = base
        self.conf_dir = base / "net.d"
        self.conf_dir.mkdir()
        conf = base / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{bin_dir}"]\n'
            f'network_config_dir = "{self.conf_dir}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n')
        self.env = {"CONTAINERS_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def __call__(self, *argv: str, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", "--root", str(self.base / "root"), "--runroot",
                               str(self.base / "runroot"), *argv], capture_output=True,
                              text=True, env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(argv)} failed: {done.stderr}")
        return done


@pytest.fixture(scope="module")
def podman(rootfs_tarball: pathlib.Path, cni_bin_dir: pathlib.Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    runner = Podman(tmp_path_factory.mktemp("podman"), cni_bin_dir)
    runner("import", str(rootfs_tarball), IMAGE)
    yield runner
    runner("rm", "-af", "-t", "0", check=False)
    runner("rmi", "-af", check=False)


def ip_of(podman: Podman, name: str) -> str:
    inspected = json.loads(podman("inspect", name).stdout)[0]
    networks = inspected["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def full_id(podman: Podman, name: str) -> str:
    return str(json.loads(podman("inspect", name).stdout)[0]["Id"])


async def test_podman_containers_on_neutron_ports(
        podman: Podman, runtime_daemon: cni.DaemonProcess, runtime_net: resources.Network,
        runtime_neutron: client.Neutron, only_8080: resources.SecurityGroup,
        cloud_config: object) -> None:
    for name, extra in (("kuryr-rt", {}), ("kuryr-rt-8080", {"security_groups": (only_8080.id,)})):
        install_cni.write_conflist(podman.conf_dir, install_cni.conflist(
            name=f"{name}-{RUN_ID}", network=runtime_net.name,
            daemon_socket=runtime_daemon.socket, **extra))  # type: ignore[arg-type]
    net, net_8080 = f"kuryr-rt-{RUN_ID}", f"kuryr-rt-8080-{RUN_ID}"
    names = [f"kt-{RUN_ID}-a", f"kt-{RUN_ID}-b", f"kt-{RUN_ID}-c"]
    try:
        for name, network, command in (
                (names[0], net, ["sleep", "300"]), (names[1], net, ["sleep", "300"]),
                (names[2], net_8080, ["sh", "-c", "nc -ll -p 8080 -e echo ok & "
                                                  "nc -ll -p 8081 -e echo ok & sleep 300"])):
            await asyncio.to_thread(podman, "run", "-d", "--name", name, "--network", network,
                                    "--cap-add", "NET_RAW", IMAGE, *command)
        ids = [await asyncio.to_thread(full_id, podman, n) for n in names]
        ips = [await asyncio.to_thread(ip_of, podman, n) for n in names]
        ports = []
        for cid in ids:
            (port,) = await runtime_neutron.list_ports(
                tags=[tagging.owner(standalone.TAG_CONTAINER, cid)])
            assert port.device_owner == "compute:kuryr"
            # podman started on ovn-controller's word; Neutron's ACTIVE follows.
            assert (await runtime_neutron.wait_port_status(port.id, "ACTIVE",
                                                           timeout=30)).is_active
            ports.append(port)
        assert [p.fixed_ips[0].ip_address for p in ports] == ips
        assert ports[2].security_group_ids == (only_8080.id,)

        # a and b ping each other through OVN.
        for src, dst in ((0, 1), (1, 0)):
            done = await asyncio.to_thread(podman, "exec", names[src], "ping", "-c", "2", "-W",
                                           "2", ips[dst], check=False)
            assert done.returncode == 0, done.stdout + done.stderr
        # c is reachable on TCP 8080 only.
        done = await asyncio.to_thread(podman, "exec", names[0], "nc", "-w", "3", ips[2],
                                       "8080", check=False)
        assert done.stdout.strip() == "ok", done.stdout + done.stderr
        done = await asyncio.to_thread(podman, "exec", names[0], "nc", "-w", "2", ips[2],
                                       "8081", check=False)
        assert done.stdout.strip() != "ok"
        done = await asyncio.to_thread(podman, "exec", names[0], "ping", "-c", "1", "-W", "1",
                                       ips[2], check=False)
        assert done.returncode != 0
    finally:
        await asyncio.to_thread(podman, "rm", "-f", "-t", "0", *names, check=False)

    # Nothing left: no Neutron port, no veth, no OVS port.
    binder = ovs_binding.OvsBinder(cloud_config.binding)  # type: ignore[attr-defined]
    try:
        for cid, port in zip(ids, ports, strict=True):
            assert await cni.released(functools.partial(
                runtime_neutron.list_ports,
                tags=[tagging.owner(standalone.TAG_CONTAINER, cid)])) == []
            tap = ovs_binding.host_ifname(port.id)
            assert not await asyncio.to_thread(interfaces.link_exists, tap)
            assert await asyncio.to_thread(binder.ovsdb.port_external_ids, tap) is None
    finally:
        binder.close()
