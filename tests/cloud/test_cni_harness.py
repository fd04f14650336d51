"""The kuryr CNI executable invoked exactly as a runtime invokes it (``CNI_*`` variables, a
configuration on stdin), for every supported spec version, against a real ``kuryr daemon`` on
the local Neutron: results, CHECK, idempotent DEL (also without a netns), GC, STATUS, every
error code, and nothing left behind by any failure, nor by a daemon killed in the middle of
an ADD."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from kuryr import settings
from kuryr.binding import ovs as ovs_binding
from kuryr.cli import install_cni
from kuryr.cni import codes, protocol
from kuryr.daemon import standalone
from kuryr.linux import interfaces
from kuryr.neutron import client, connecting, resources, tagging
from tests.cloud.conftest import TEST_TAG, leftovers, remove_network
from tests.conftest import RUN_ID, netns_run
from tests.support import cni, peers

VERSIONS = protocol.SUPPORTED_VERSIONS


@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return install_cni.install_executable(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture(scope="module")
async def facade(cloud_config: settings.KuryrSettings) -> AsyncIterator[client.Neutron]:
    made = client.Neutron.from_settings(cloud_config)
    yield made
    made.close()


async def make_network(neutron: client.Neutron, *, v6: bool = True,
                       prefix: int = 24) -> resources.Network:
    n = uuid.uuid4().int % 200 + 20
    net = await neutron.create_network(f"kt-{RUN_ID}-cni-{n}", tags=[TEST_TAG])
    await neutron.create_subnet(net.id, cidr=f"10.{n}.{uuid.uuid4().int % 250}.0/{prefix}",
                                ip_version=4, tags=[TEST_TAG])
    if v6:
        await neutron.create_subnet(net.id, cidr=f"fd00:{n}::/64", ip_version=6,
                                    tags=[TEST_TAG])
    return await neutron.get_network(net.id)


@pytest.fixture(scope="module")
async def cni_net(facade: client.Neutron, cloud_config: settings.KuryrSettings
                  ) -> AsyncIterator[resources.Network]:
    net = await make_network(facade)
    try:
        yield net
    finally:
        await remove_network(facade, cloud_config, net.id)


@pytest.fixture(scope="module")
def daemon(cloud_config: settings.KuryrSettings,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[cni.DaemonProcess]:
    with cni.running(cni.DaemonProcess(tmp_path_factory.mktemp("daemon"),
                                       config_file=cloud_config.source)) as d:
        yield d


@pytest.fixture
def ovs(cloud_config: settings.KuryrSettings) -> Iterator[ovs_binding.OvsBinder]:
    binder = ovs_binding.OvsBinder(cloud_config.binding)
    yield binder
    binder.close()


def container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


async def ports_of(neutron: client.Neutron, cid: str) -> list[resources.Port]:
    return await neutron.list_ports(tags=[tagging.owner(standalone.TAG_CONTAINER, cid)])


async def assert_nothing_left(neutron: client.Neutron, ovs: ovs_binding.OvsBinder, cid: str,
                              port_ids: list[str], netns: str | None = None) -> None:
    """The host side at once (DEL answers once it is unplugged), Neutron within a bound (the
    port is deleted in the background)."""
    for port_id in port_ids:
        assert await leftovers(ovs, port_id) == []
    if netns:
        assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=netns)
    assert await cni.released(lambda: ports_of(neutron, cid)) == []
    for port_id in port_ids:
        with pytest.raises(Exception):  # noqa: B017 - NotFoundError
            await neutron.get_port(port_id)


@pytest.mark.parametrize("version", VERSIONS)
async def test_add_check_del(version: str, executable: pathlib.Path, daemon: cni.DaemonProcess,
                             cni_net: resources.Network, facade: client.Neutron,
                             ovs: ovs_binding.OvsBinder, cloud_config: settings.KuryrSettings,
                             make_netns: Callable[[], str]) -> None:
    ns, cid = make_netns(), container_id()
    path = f"/run/netns/{ns}"
    conf = cni.netconf(version, cni_net.name, socket_path=daemon.socket)
    rc, result = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                         container_id=cid, netns=path)
    assert rc == 0, result
    assert result is not None and result["cniVersion"] == version
    (port,) = await ports_of(facade, cid)
    assert port.device_owner == "compute:kuryr"
    # ADD answered on ovn-controller's word; Neutron's ACTIVE follows.
    assert (await facade.wait_port_status(port.id, "ACTIVE", timeout=30)).is_active
    assert port.host_id == cloud_config.binding.host
    assert tagging.owner(standalone.TAG_IFNAME, "eth0") in port.tags
    (interface,) = result["interfaces"]
    assert interface == {"name": "eth0", "mac": port.mac, "sandbox": path,
                         **({"mtu": cni_net.mtu} if version == "1.1.0" else {})}
    addresses = {ip["address"].split("/")[0] for ip in result["ips"]}
    assert addresses == {f.ip_address for f in port.fixed_ips}
    assert all(("version" in ip) == version.startswith("0.") for ip in result["ips"])
    assert {r["dst"] for r in result["routes"]} == {"0.0.0.0/0", "::/0"}
    seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=path)
    assert seen is not None and seen["mac"] == port.mac
    assert sorted(seen["addresses"]) == sorted(ip["address"] for ip in result["ips"])

    # ADD again (a runtime retrying): the same port, nothing new.
    rc, again = await asyncio.to_thread(cni.invoke, executable, "ADD", conf, container_id=cid,
                                        netns=path)
    assert rc == 0 and again is not None and again["interfaces"] == result["interfaces"]
    assert len(await ports_of(facade, cid)) == 1

    with_prev = {**conf, "prevResult": result}
    if version != "0.3.1":
        rc, out = await asyncio.to_thread(cni.invoke, executable, "CHECK", with_prev,
                                          container_id=cid, netns=path)
        assert rc == 0 and out is None, out
        v4 = next(ip["address"] for ip in result["ips"] if ":" not in ip["address"])
        netns_run(ns, "ip", "addr", "del", v4, "dev", "eth0")
        rc, out = await asyncio.to_thread(cni.invoke, executable, "CHECK", with_prev,
                                          container_id=cid, netns=path)
        assert rc == 1 and out is not None and out["code"] == codes.CHECK_MISMATCH, out
        assert v4 in out["msg"] and out["cniVersion"] == version

    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", with_prev,
                                      container_id=cid, netns=path)
    assert rc == 0 and out is None, out
    await assert_nothing_left(facade, ovs, cid, [port.id], path)
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf, container_id=cid,
                                      netns=path)
    assert rc == 0, out  # DEL is idempotent


async def test_two_containers_ping_and_del_without_netns(
        executable: pathlib.Path, daemon: cni.DaemonProcess, cni_net: resources.Network,
        facade: client.Neutron, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str]) -> None:
    conf = cni.netconf("1.0.0", cni_net.id, socket_path=daemon.socket)  # network by ID
    made = []
    for ns in (make_netns(), make_netns()):
        cid = container_id()
        rc, result = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                             container_id=cid, netns=f"/run/netns/{ns}")
        assert rc == 0 and result is not None, result
        v4 = next(ip["address"].split("/")[0] for ip in result["ips"]
                  if ":" not in ip["address"])
        made.append((ns, cid, v4, (await ports_of(facade, cid))[0].id))
    (ns_a, _, ip_a, _), (ns_b, _, ip_b, _) = made
    assert await asyncio.to_thread(peers.ping, ns_a, ip_b)
    assert await asyncio.to_thread(peers.ping, ns_b, ip_a)
    for ns, cid, _, port_id in made:
        # containerd: DEL with an empty CNI_NETNS (the namespace may already be gone).
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=cid, netns="")
        assert rc == 0, out
        await assert_nothing_left(facade, ovs, cid, [port_id], f"/run/netns/{ns}")


@pytest.mark.parametrize("version", VERSIONS)
async def test_failures_get_their_code_and_leave_nothing(
        version: str, executable: pathlib.Path, daemon: cni.DaemonProcess,
        cni_net: resources.Network, facade: client.Neutron, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str], tmp_path: pathlib.Path) -> None:
    ns, cid = make_netns(), container_id()
    path = f"/run/netns/{ns}"
    conf = cni.netconf(version, cni_net.name, socket_path=daemon.socket)

    def call(config: dict[str, object] | bytes, **kw: object) -> tuple[int, dict | None]:
        args: dict[str, object] = {"container_id": cid, "netns": path, **kw}
        return cni.invoke(executable, "ADD", config, **args)  # type: ignore[arg-type]

    cases: list[tuple[str, tuple[int, dict | None], int]] = [
        ("malformed stdin", await asyncio.to_thread(call, b"{\"cniVersion\": "), 6),
        ("no container id", await asyncio.to_thread(call, conf, container_id=""), 4),
        ("bad ifname", await asyncio.to_thread(call, conf, ifname="a/b"), 4),
        ("no netns", await asyncio.to_thread(call, conf, netns=""), 4),
        ("netns that does not exist",
         await asyncio.to_thread(call, conf, netns=f"/run/netns/kt-{RUN_ID}-none"), 104),
        ("unknown network", await asyncio.to_thread(
            call, {**conf, "network": f"kt-{RUN_ID}-no-such-net"}), 7),
        ("unknown security group", await asyncio.to_thread(
            call, {**conf, "securityGroups": [f"kt-{RUN_ID}-no-such-group"]}), 7),
        ("daemon down", await asyncio.to_thread(
            call, {**conf, "daemonSocket": str(tmp_path / "no-daemon.sock")}), 11),
    ]
    for what, (rc, out), code in cases:
        assert rc == 1 and out is not None, what
        assert out["code"] == code, (what, out)
        assert out["msg"], what
        if code != 6:
            assert out["cniVersion"] == version, what
    await assert_nothing_left(facade, ovs, cid, [], path)


async def test_neutron_down(executable: pathlib.Path, cni_net: resources.Network,
                            facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                            tmp_path: pathlib.Path, make_netns: Callable[[], str]) -> None:
    dead = {"KURYR_NEUTRON_CLOUD": "", "KURYR_NEUTRON_AUTH_TYPE": "none",
            "KURYR_NEUTRON_ENDPOINT_OVERRIDE": "http://127.0.0.1:9/",
            "KURYR_NEUTRON_TIMEOUT": "3", "KURYR_CONFIG": ""}
    ns, cid = make_netns(), container_id()
    with cni.running(cni.DaemonProcess(tmp_path, config_file=None, env=dead)) as down:
        conf = cni.netconf("1.0.0", cni_net.name, socket_path=down.socket)
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=cid, netns=f"/run/netns/{ns}")
        assert rc == 1 and out is not None and out["code"] == codes.NEUTRON_UNAVAILABLE, out
        assert "cannot reach Neutron" in out["msg"]
        rc, out = await asyncio.to_thread(cni.invoke, executable, "STATUS",
                                          {**conf, "cniVersion": "1.1.0"})
        assert rc == 1 and out is not None and out["code"] == codes.NOT_AVAILABLE, out
    await assert_nothing_left(facade, ovs, cid, [], f"/run/netns/{ns}")


async def test_addresses_exhausted(executable: pathlib.Path, daemon: cni.DaemonProcess,
                                   facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                                   cloud_config: settings.KuryrSettings,
                                   make_netns: Callable[[], str]) -> None:
    tiny = await make_network(facade, v6=False, prefix=29)  # 5 addresses past the gateway
    try:
        conf = cni.netconf("1.0.0", tiny.id, socket_path=daemon.socket)
        added = []
        for _ in range(8):
            ns, cid = make_netns(), container_id()
            rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                              container_id=cid, netns=f"/run/netns/{ns}")
            if rc != 0:
                break
            added.append(cid)
        assert rc == 1 and out is not None and out["code"] == codes.QUOTA_EXCEEDED, out
        assert added, "not even one port fitted"
        await assert_nothing_left(facade, ovs, cid, [], f"/run/netns/{ns}")
        for cid in added:
            rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                              container_id=cid)
            assert rc == 0, out
    finally:
        await remove_network(facade, cloud_config, tiny.id)


async def test_port_quota_exhausted(executable: pathlib.Path, daemon: cni.DaemonProcess,
                                    facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                                    cloud_config: settings.KuryrSettings,
                                    make_netns: Callable[[], str]) -> None:
    """The project's port quota, not the subnet's addresses: a project of the test's own with
    a quota of one port; the second ADD gets code 103 and leaves nothing behind."""
    project = uuid.uuid4().hex
    net = await facade.create_network(f"kt-{RUN_ID}-quota", tags=[TEST_TAG], project_id=project)
    conn = connecting.connect(cloud_config.neutron)
    try:
        await facade.create_subnet(net.id, cidr="10.251.0.0/24", tags=[TEST_TAG])
        conn.network.update_quota(project, ports=1)
        conf = cni.netconf("1.0.0", net.id, socket_path=daemon.socket, project=project)
        first = container_id()
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=first,
                                          netns=f"/run/netns/{make_netns()}")
        assert rc == 0, out
        ns, cid = make_netns(), container_id()
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=cid, netns=f"/run/netns/{ns}")
        assert rc == 1 and out is not None and out["code"] == codes.QUOTA_EXCEEDED, out
        assert "uota" in out["msg"], out
        await assert_nothing_left(facade, ovs, cid, [], f"/run/netns/{ns}")
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=first)
        assert rc == 0, out
    finally:
        await remove_network(facade, cloud_config, net.id)
        conn.network.delete_quota(project)
        conn.close()


async def test_status_and_gc(executable: pathlib.Path, daemon: cni.DaemonProcess,
                             cni_net: resources.Network, facade: client.Neutron,
                             ovs: ovs_binding.OvsBinder, make_netns: Callable[[], str]) -> None:
    conf = cni.netconf("1.1.0", cni_net.name, socket_path=daemon.socket, name="kuryr-gc")
    rc, out = await asyncio.to_thread(cni.invoke, executable, "STATUS", conf)
    assert rc == 0 and out is None, out
    kept, gone = container_id(), container_id()
    for cid in (kept, gone):
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf, container_id=cid,
                                          netns=f"/run/netns/{make_netns()}")
        assert rc == 0, out
    gone_port = (await ports_of(facade, gone))[0].id
    valid = {"cni.dev/valid-attachments": [{"containerID": kept, "ifname": "eth0"}]}
    rc, out = await asyncio.to_thread(cni.invoke, executable, "GC", {**conf, **valid})
    assert rc == 0, out
    await assert_nothing_left(facade, ovs, gone, [gone_port])
    assert len(await ports_of(facade, kept)) == 1
    # Another network configuration's GC does not touch these ports.
    rc, out = await asyncio.to_thread(cni.invoke, executable, "GC", {**conf, "name": "other",
                                      "cni.dev/valid-attachments": []})
    assert rc == 0 and len(await ports_of(facade, kept)) == 1
    rc, out = await asyncio.to_thread(cni.invoke, executable, "GC", {
        **conf, "cni.dev/valid-attachments": []})
    assert rc == 0 and await cni.released(lambda: ports_of(facade, kept)) == []


async def test_daemon_killed_during_add(executable: pathlib.Path, cni_net: resources.Network,
                                        facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                                        cloud_config: settings.KuryrSettings,
                                        tmp_path: pathlib.Path,
                                        make_netns: Callable[[], str]) -> None:
    # Readiness from Neutron's ACTIVE, which lags: that wait is the window to kill it in (on
    # ovn-controller's word the ADD is done within milliseconds of the port's creation).
    victim = cni.DaemonProcess(tmp_path, config_file=cloud_config.source,
                               env={"KURYR_BINDING_READINESS": "neutron"})
    victim.start()
    try:
        conf = cni.netconf("1.1.0", cni_net.name, socket_path=victim.socket, name="kuryr-kill")
        by_del, by_gc = container_id(), container_id()
        namespaces = {by_del: make_netns(), by_gc: make_netns()}
        runs = [cni.start_add(executable, conf, container_id=cid, netns=f"/run/netns/{ns}")
                for cid, ns in namespaces.items()]
        # Kill as soon as both ports exist in Neutron: the ADDs are plugging or waiting ACTIVE.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [await ports_of(facade, cid) for cid in namespaces]
            if all(found):
                break
            await asyncio.sleep(0.02)
        victim.kill()
        for run in runs:
            assert run.stdout is not None
            run.wait(timeout=30)
            out = run.stdout.read()
            run.stdout.close()
            assert run.returncode == 1 and b'"code": 11' in out, out
        port_ids = [p.id for cid in namespaces for p in await ports_of(facade, cid)]
        assert len(port_ids) == 2
    finally:
        victim.stop()
    with cni.running(cni.DaemonProcess(tmp_path, config_file=cloud_config.source)) as again:
        conf = {**conf, "daemonSocket": again.socket}
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=by_del, netns="")
        assert rc == 0, out
        rc, out = await asyncio.to_thread(cni.invoke, executable, "GC", {
            **conf, "cni.dev/valid-attachments": []})
        assert rc == 0, out
    for cid, ns in namespaces.items():
        await assert_nothing_left(facade, ovs, cid, port_ids, f"/run/netns/{ns}")


async def test_daemon_killed_after_fast_del(executable: pathlib.Path,
                                            cni_net: resources.Network,
                                            facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                                            cloud_config: settings.KuryrSettings,
                                            tmp_path: pathlib.Path,
                                            make_netns: Callable[[], str]) -> None:
    """DEL answers once the host side is unplugged; a daemon SIGKILLed right then leaves
    nothing behind once restarted. Whether the kill beat the background delete to Neutron is a
    race, so the state it would leave (a port of the container, unplugged) is also made
    deterministically: the next daemon releases it at start-up, before serving."""
    victim = cni.DaemonProcess(tmp_path, config_file=cloud_config.source)
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=victim.socket, name="kuryr-fastdel")
    fast, cut = container_id(), container_id()
    namespaces = {fast: f"/run/netns/{make_netns()}", cut: f"/run/netns/{make_netns()}"}
    with cni.running(victim):
        for cid, path in namespaces.items():
            rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                              container_id=cid, netns=path)
            assert rc == 0, out
        port_ids = {cid: [p.id for p in await ports_of(facade, cid)] for cid in namespaces}
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=fast, netns=namespaces[fast])
        victim.kill()
        assert rc == 0, out
    assert await leftovers(ovs, port_ids[fast][0]) == []  # unplugged before DEL answered
    # What a kill between the unplug and the Neutron delete leaves: an unplugged port.
    await asyncio.to_thread(ovs.unplug_sync, port_ids[cut][0])
    assert [p.id for p in await ports_of(facade, cut)] == port_ids[cut]
    with cni.running(cni.DaemonProcess(tmp_path, config_file=cloud_config.source)):
        # Released before the daemon serves: no polling needed.
        assert await ports_of(facade, cut) == []
    assert f"releasing port {port_ids[cut][0]}" in (tmp_path / "daemon.log").read_text()
    for cid, path in namespaces.items():
        await assert_nothing_left(facade, ovs, cid, port_ids[cid], path)


async def test_del_then_add_same_container(executable: pathlib.Path, daemon: cni.DaemonProcess,
                                           cni_net: resources.Network, facade: client.Neutron,
                                           ovs: ovs_binding.OvsBinder,
                                           make_netns: Callable[[], str]) -> None:
    """An ADD of the same container and ifname right after its DEL gets a new port, which the
    old port's background release leaves alone."""
    ns, cid = make_netns(), container_id()
    path = f"/run/netns/{ns}"
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=daemon.socket)
    rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf, container_id=cid,
                                      netns=path)
    assert rc == 0, out
    (old,) = await ports_of(facade, cid)
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf, container_id=cid,
                                      netns=path)
    assert rc == 0, out
    rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf, container_id=cid,
                                      netns=path)
    assert rc == 0 and out is not None, out
    deadline = time.monotonic() + cni.RELEASE_TIMEOUT
    while old.id in {p.id for p in await ports_of(facade, cid)}:
        assert time.monotonic() < deadline, "the old port was not released"
        await asyncio.sleep(0.2)
    (new,) = await ports_of(facade, cid)
    assert new.id != old.id
    assert (await facade.wait_port_status(new.id, "ACTIVE", timeout=30)).is_active
    assert out["interfaces"][0]["mac"] == new.mac
    assert await leftovers(ovs, new.id) != []  # still plugged
    seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=path)
    assert seen is not None and seen["mac"] == new.mac
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf, container_id=cid,
                                      netns=path)
    assert rc == 0, out
    await assert_nothing_left(facade, ovs, cid, [old.id, new.id], path)


async def test_pooled_ports(executable: pathlib.Path, cni_net: resources.Network,
                            facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                            cloud_config: settings.KuryrSettings, tmp_path: pathlib.Path,
                            make_netns: Callable[[], str]) -> None:
    """With the warm pool on, ADD hands over a ready port (ACTIVE, retagged for its container),
    DEL gives it back, and a restarted daemon finds the pool again in Neutron."""
    pool_tag = tagging.owner("pool-host", cloud_config.binding.host)
    pooled = cni.DaemonProcess(tmp_path, config_file=cloud_config.source, pool=True,
                               env={"KURYR_CNI_DAEMON_POOL_SIZE": "2"})
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=pooled.socket, name="kuryr-pool")
    with cni.running(pooled):
        first, ns = container_id(), make_netns()
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=first, netns=f"/run/netns/{ns}")
        assert rc == 0, out  # a cold port: the pool starts filling now
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = await facade.list_ports(network_id=cni_net.id, tags=[pool_tag])
            if len([p for p in found if p.status == "ACTIVE"]) >= 2:
                break
            await asyncio.sleep(0.5)
        ready = {p.id for p in await facade.list_ports(network_id=cni_net.id, tags=[pool_tag])}
        assert len(ready) == 2
        second, ns2 = container_id(), make_netns()
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=second, netns=f"/run/netns/{ns2}")
        assert rc == 0 and out is not None, out
        rc, check = await asyncio.to_thread(cni.invoke, executable, "CHECK",
                                            {**conf, "prevResult": out}, container_id=second,
                                            netns=f"/run/netns/{ns2}")
        assert rc == 0, check
        (port,) = await ports_of(facade, second)  # retagged for its container
        assert port.id in ready and port.status == "ACTIVE"
        seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=f"/run/netns/{ns2}")
        assert seen is not None and seen["mac"] == port.mac
        for cid, namespace in ((first, ns), (second, ns2)):
            rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                              container_id=cid, netns=f"/run/netns/{namespace}")
            assert rc == 0, out
            assert await cni.released(functools.partial(ports_of, facade, cid)) == []
            assert not await asyncio.to_thread(interfaces.link_exists, "eth0",
                                               netns=f"/run/netns/{namespace}")
    # After a restart the pool is found again from Neutron tags.
    with cni.running(cni.DaemonProcess(tmp_path, config_file=cloud_config.source, pool=True,
                                       env={"KURYR_CNI_DAEMON_POOL_SIZE": "2"})):
        assert "found again" in (tmp_path / "daemon.log").read_text()


async def free_addresses(neutron: client.Neutron, network: resources.Network
                         ) -> tuple[str, str]:
    """An IPv4 and an IPv6 address of the network's subnets that no port holds (high in each
    subnet, away from Neutron's own picks)."""
    held = {f.ip_address for p in await neutron.list_ports(network_id=network.id)
            for f in p.fixed_ips}
    found = {}
    for subnet in await neutron.list_subnets(network_id=network.id):
        net = ipaddress.ip_network(subnet.cidr)
        found[subnet.ip_version] = next(str(net[-n]) for n in range(10, 200)
                                        if str(net[-n]) not in held)
    return found[4], found[6]


def random_mac() -> str:
    tail = uuid.uuid4().bytes[:4]
    return "02:00:" + ":".join(f"{b:02x}" for b in tail)


@pytest.mark.parametrize(("version", "via"), [("1.0.0", "args"), ("0.3.1", "args"),
                                              ("1.0.0", "runtimeConfig")])
async def test_static_addresses_and_mac(version: str, via: str, executable: pathlib.Path,
                                        daemon: cni.DaemonProcess, cni_net: resources.Network,
                                        facade: client.Neutron, ovs: ovs_binding.OvsBinder,
                                        make_netns: Callable[[], str]) -> None:
    """``IP=``/``MAC=`` in CNI_ARGS, or runtimeConfig ``ips``/``mac``: the port and the
    container get exactly those; CHECK passes; DEL deletes the port."""
    ns, cid = make_netns(), container_id()
    path = f"/run/netns/{ns}"
    v4, v6 = await free_addresses(facade, cni_net)
    mac = random_mac()
    conf = cni.netconf(version, cni_net.name, socket_path=daemon.socket)
    env = {}
    if via == "args":
        env = {"CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME=p;IP={v4},{v6};MAC={mac.upper()}"}
    else:
        conf["runtimeConfig"] = {"ips": [f"{v4}/24", f"{v6}/64"], "mac": mac}
    rc, result = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                         container_id=cid, netns=path, env=env)
    assert rc == 0 and result is not None, result
    (port,) = await ports_of(facade, cid)
    assert port.mac == mac and {f.ip_address for f in port.fixed_ips} == {v4, v6}
    assert result["interfaces"][0]["mac"] == mac
    assert {ip["address"].split("/")[0] for ip in result["ips"]} == {v4, v6}
    seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=path)
    assert seen is not None and seen["mac"] == mac
    assert {a.split("/")[0] for a in seen["addresses"]} == {v4, v6}
    with_prev = {**conf, "prevResult": result}
    if version != "0.3.1":
        # ADD answered on ovn-controller's word; CHECK wants Neutron's ACTIVE too.
        assert (await facade.wait_port_status(port.id, "ACTIVE", timeout=30)).is_active
        rc, out = await asyncio.to_thread(cni.invoke, executable, "CHECK", with_prev,
                                          container_id=cid, netns=path, env=env)
        assert rc == 0 and out is None, out
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", with_prev,
                                      container_id=cid, netns=path, env=env)
    assert rc == 0, out
    await assert_nothing_left(facade, ovs, cid, [port.id], path)


async def test_static_ipv4_only_gets_ipv6_from_neutron(
        executable: pathlib.Path, daemon: cni.DaemonProcess, cni_net: resources.Network,
        facade: client.Neutron, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str]) -> None:
    ns, cid = make_netns(), container_id()
    v4, _ = await free_addresses(facade, cni_net)
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=daemon.socket)
    rc, result = await asyncio.to_thread(cni.invoke, executable, "ADD", conf, container_id=cid,
                                         netns=f"/run/netns/{ns}",
                                         env={"CNI_ARGS": f"IP={v4}"})
    assert rc == 0 and result is not None, result
    (port,) = await ports_of(facade, cid)
    addresses = sorted((ipaddress.ip_address(f.ip_address) for f in port.fixed_ips),
                       key=lambda a: a.version)
    assert str(addresses[0]) == v4 and [a.version for a in addresses] == [4, 6]
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf, container_id=cid,
                                      netns=f"/run/netns/{ns}")
    assert rc == 0, out
    await assert_nothing_left(facade, ovs, cid, [port.id])


async def test_static_address_refusals_name_it_and_leave_nothing(
        executable: pathlib.Path, daemon: cni.DaemonProcess, cni_net: resources.Network,
        facade: client.Neutron, ovs: ovs_binding.OvsBinder,
        make_netns: Callable[[], str]) -> None:
    """An address on no subnet of the network (4 from CNI_ARGS, 7 from runtimeConfig), an
    address or a MAC another port holds (107): a CNI error naming it, no port in Neutron."""
    holder_ns, holder = make_netns(), container_id()
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=daemon.socket)
    rc, held = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                       container_id=holder, netns=f"/run/netns/{holder_ns}")
    assert rc == 0 and held is not None, held
    (holder_port,) = await ports_of(facade, holder)
    held_v4 = next(f.ip_address for f in holder_port.fixed_ips if ":" not in f.ip_address)
    held_v6 = next(f.ip_address for f in holder_port.fixed_ips if ":" in f.ip_address)
    ns, cid = make_netns(), container_id()
    path = f"/run/netns/{ns}"
    cases = [
        ({"CNI_ARGS": "IP=192.0.2.77"}, conf, codes.INVALID_ENVIRONMENT, "192.0.2.77"),
        ({}, {**conf, "runtimeConfig": {"ips": ["2001:db8::77/64"]}}, codes.INVALID_CONFIG,
         "2001:db8::77"),
        ({"CNI_ARGS": f"IP={held_v4}"}, conf, codes.ADDRESS_IN_USE, held_v4),
        ({"CNI_ARGS": f"IP={held_v6}"}, conf, codes.ADDRESS_IN_USE, held_v6),
        ({"CNI_ARGS": f"MAC={holder_port.mac}"}, conf, codes.ADDRESS_IN_USE, holder_port.mac),
        ({"CNI_ARGS": "MAC=03:00:00:00:00:01"}, conf, codes.INVALID_ENVIRONMENT,
         "03:00:00:00:00:01"),
    ]
    for env, config, code, named in cases:
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", config,
                                          container_id=cid, netns=path, env=env)
        assert rc == 1 and out is not None, (env, out)
        assert out["code"] == code and named in out["msg"], (env, out)
        assert await ports_of(facade, cid) == [], env
    await assert_nothing_left(facade, ovs, cid, [], path)
    rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf, container_id=holder,
                                      netns=f"/run/netns/{holder_ns}")
    assert rc == 0, out
    await assert_nothing_left(facade, ovs, holder, [holder_port.id])


async def test_static_address_never_takes_a_pooled_port(
        executable: pathlib.Path, cni_net: resources.Network, facade: client.Neutron,
        ovs: ovs_binding.OvsBinder, cloud_config: settings.KuryrSettings,
        tmp_path: pathlib.Path, make_netns: Callable[[], str]) -> None:
    """With the warm pool full, a request naming an address gets a port of its own, and at DEL
    that port is deleted, not recycled into the pool (it would keep the address)."""
    pool_tag = tagging.owner("pool-host", cloud_config.binding.host)
    pooled = cni.DaemonProcess(tmp_path, config_file=cloud_config.source, pool=True,
                               env={"KURYR_CNI_DAEMON_POOL_SIZE": "1"})
    conf = cni.netconf("1.0.0", cni_net.name, socket_path=pooled.socket, name="kuryr-static")
    with cni.running(pooled):
        warm_ns, warm_cid = make_netns(), container_id()
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=warm_cid, netns=f"/run/netns/{warm_ns}")
        assert rc == 0, out  # wakes the pool of this network
        deadline = time.monotonic() + 60
        ready: set[str] = set()
        while time.monotonic() < deadline and not ready:
            ready = {p.id for p in await facade.list_ports(network_id=cni_net.id,
                                                           tags=[pool_tag])
                     if p.status == "ACTIVE"}
            await asyncio.sleep(0.5)
        assert ready
        ns, cid = make_netns(), container_id()
        v4, v6 = await free_addresses(facade, cni_net)
        mac = random_mac()
        rc, out = await asyncio.to_thread(
            cni.invoke, executable, "ADD", conf, container_id=cid, netns=f"/run/netns/{ns}",
            env={"CNI_ARGS": f"IP={v4},{v6};MAC={mac}"})
        assert rc == 0 and out is not None, out
        (port,) = await ports_of(facade, cid)
        assert port.id not in ready and port.mac == mac
        assert {f.ip_address for f in port.fixed_ips} == {v4, v6}
        assert tagging.owner(standalone.TAG_STATIC, "true") in port.tags
        # DEL as containerd sends it (no CNI_ARGS): still deleted, not recycled.
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=cid, netns="",
                                          env={"CNI_ARGS": ""})
        assert rc == 0, out
        await assert_nothing_left(facade, ovs, cid, [port.id], f"/run/netns/{ns}")
        pool = {p.id for p in await facade.list_ports(network_id=cni_net.id, tags=[pool_tag])}
        assert port.id not in pool
        rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                          container_id=warm_cid,
                                          netns=f"/run/netns/{warm_ns}")
        assert rc == 0, out
        assert await cni.released(functools.partial(ports_of, facade, warm_cid)) == []
