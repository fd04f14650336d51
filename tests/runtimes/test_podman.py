"""podman (CNI backend) with kuryr networks on the local cloud: containers get Neutron ports
and ping each other, a container in a security group that opens TCP 8080 is reachable on that
port only, ``--ip``/``--ip6``/``--mac-address`` give exactly those (and are refused, naming the
address, when outside the network or in use), and ``podman rm`` leaves no Neutron port, veth or
OVS port behind."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import pathlib
import subprocess
import uuid
from collections.abc import Awaitable, Iterator

import pytest

from kuryr import settings
from kuryr.binding import ovs as ovs_binding
from kuryr.cli import install_cni
from kuryr.daemon import standalone
from kuryr.linux import interfaces
from kuryr.neutron import client, resources, tagging
from tests.cloud.conftest import TEST_TAG, remove_network
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


async def _dual_stack_network(neutron: client.Neutron) -> tuple[resources.Network, str, str]:
    n = uuid.uuid4().int % 200 + 20
    net = await neutron.create_network(f"kt-{RUN_ID}-rt-static-{n}", tags=[TEST_TAG])
    v4 = f"10.{n}.{uuid.uuid4().int % 250}.0/24"
    v6 = f"fd00:{n:x}:{uuid.uuid4().int % 0xffff:x}::/64"
    await neutron.create_subnet(net.id, cidr=v4, ip_version=4, tags=[TEST_TAG])
    await neutron.create_subnet(net.id, cidr=v6, ip_version=6, tags=[TEST_TAG])
    return await neutron.get_network(net.id), v4, v6


def _container_ports(neutron: client.Neutron, cid: str) -> functools.partial[
        Awaitable[list[resources.Port]]]:
    return functools.partial(neutron.list_ports,
                             tags=[tagging.owner(standalone.TAG_CONTAINER, cid)])


async def test_podman_static_ip_ip6_and_mac(
        podman: Podman, runtime_daemon: cni.DaemonProcess, runtime_neutron: client.Neutron,
        cni_bin_dir: pathlib.Path, cloud_config: settings.KuryrSettings) -> None:
    """``podman run --ip --ip6 --mac-address`` on a kuryr network: the Neutron port and the
    container have exactly those, CHECK passes; an address outside the network's subnets, or
    one in use, fails ``podman run`` with kuryr's error naming it and leaves no port."""
    net, cidr4, cidr6 = await _dual_stack_network(runtime_neutron)
    name = f"kuryr-static-{RUN_ID}"
    install_cni.write_conflist(podman.conf_dir, install_cni.conflist(
        name=name, network=net.name, daemon_socket=runtime_daemon.socket))
    v4 = str(ipaddress.ip_network(cidr4)[200])
    v6 = str(ipaddress.ip_network(cidr6)[0x200])
    mac = "02:00:" + ":".join(f"{b:02x}" for b in uuid.uuid4().bytes[:4])
    first, second = f"kt-{RUN_ID}-static-a", f"kt-{RUN_ID}-static-b"
    cid = ""
    try:
        await asyncio.to_thread(podman, "run", "-d", "--name", first, "--network", name,
                                "--ip", v4, "--ip6", v6, "--mac-address", mac, IMAGE,
                                "sleep", "300")
        cid = await asyncio.to_thread(full_id, podman, first)
        (port,) = await _container_ports(runtime_neutron, cid)()
        assert port.mac == mac
        assert {f.ip_address for f in port.fixed_ips} == {v4, v6}
        assert await asyncio.to_thread(ip_of, podman, first) == v4
        shown = (await asyncio.to_thread(podman, "exec", first, "ip", "addr", "show",
                                         "eth0")).stdout
        assert mac in shown and f"{v4}/24" in shown and f"{v6}/64" in shown, shown

        # CHECK, as a runtime sends it, against what podman's container has.
        sandbox = json.loads(podman("inspect", first).stdout)[0]["NetworkSettings"][
            "SandboxKey"]
        assert (await runtime_neutron.wait_port_status(port.id, "ACTIVE",
                                                       timeout=30)).is_active
        previous = {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "mac": mac, "sandbox": sandbox}],
                    "ips": [{"address": f"{v4}/24", "interface": 0},
                            {"address": f"{v6}/64", "interface": 0}]}
        conf = cni.netconf("1.0.0", net.name, socket_path=runtime_daemon.socket, name=name,
                           prevResult=previous)
        rc, out = await asyncio.to_thread(
            cni.invoke, cni_bin_dir / install_cni.EXECUTABLE, "CHECK", conf, container_id=cid,
            netns=sandbox, env={"CNI_ARGS": f"IgnoreUnknown=1;IP={v4},{v6};MAC={mac}"})
        assert rc == 0 and out is None, out

        # Refusals: podman fails with kuryr's message naming the address; no port is left.
        for argv, named in ((["--ip", "192.0.2.9"], "192.0.2.9"),
                            (["--ip", v4], v4),
                            (["--mac-address", mac], mac)):
            done = await asyncio.to_thread(podman, "run", "-d", "--name", second,
                                           "--network", name, *argv, IMAGE, "sleep", "300",
                                           check=False)
            assert done.returncode != 0 and named in done.stderr, done.stderr
            await asyncio.to_thread(podman, "rm", "-f", "-t", "0", second, check=False)
        ports = await runtime_neutron.list_ports(network_id=net.id,
                                                 device_owner="compute:kuryr")
        assert [p.id for p in ports] == [port.id]
    finally:
        for container in (first, second):  # one by one: a missing name fails the whole rm
            await asyncio.to_thread(podman, "rm", "-f", "-t", "0", container, check=False)
        try:
            if cid:
                assert await cni.released(_container_ports(runtime_neutron, cid)) == []
        finally:
            await remove_network(runtime_neutron, cloud_config, net.id)
