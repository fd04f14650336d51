"""The Neutron facade against the real local Neutron: every resource kuryr needs, tagged as
design.md says, with idempotent deletes and failures mapped to kuryr's errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import openstack.connection
import pytest

from kuryr import errors, settings
from kuryr.cloud import layout
from kuryr.neutron import client, connecting, resources, tagging
from tests.cloud.conftest import TEST_TAG, remove_network
from tests.conftest import RUN_ID


def _base(neutron: client.Neutron) -> set[str]:
    return {tagging.KURYR, tagging.cluster(neutron.cluster_id)}


async def test_network_subnets_and_tags(neutron: client.Neutron,
                                        network: resources.Network) -> None:
    assert _base(neutron) | {TEST_TAG} <= set(network.tags)
    assert network.mtu == 1442  # geneve overhead on a 1500 MTU
    subnets = await neutron.list_subnets(network_id=network.id)
    assert sorted(s.ip_version for s in subnets) == [4, 6]
    assert all(_base(neutron) <= set(s.tags) for s in subnets)
    by_tag = await neutron.list_networks(tags=[TEST_TAG])
    assert network.id in {n.id for n in by_tag}
    assert (await neutron.get_network(network.name)).id == network.id


async def test_ports_single_bulk_update_and_idempotent_delete(
        neutron: client.Neutron, network: resources.Network,
        cloud_config: settings.KuryrSettings) -> None:
    port = await neutron.create_port(network.id, tags=[TEST_TAG], host_id=cloud_config.binding.host,
                                     device_owner="compute:kuryr")
    assert port.host_id == cloud_config.binding.host
    assert len(port.fixed_ips) == 2  # one address per subnet
    bulk = await neutron.create_ports(network.id, 3, tags=[TEST_TAG, tagging.owner("pool", "x")])
    assert len({p.id for p in bulk}) == 3
    assert all(tagging.value_of(p.tags, "pool") == "x" for p in bulk)
    found = await neutron.list_ports(tags=[tagging.owner("pool", "x")], network_id=network.id)
    assert {p.id for p in found} == {p.id for p in bulk}
    updated = await neutron.update_port(port.id, name="renamed",
                                        tags=[TEST_TAG, tagging.owner("cni-ifname", "eth0")])
    assert updated.name == "renamed"
    assert tagging.value_of(updated.tags, "cni-ifname") == "eth0"
    assert _base(neutron) <= set(updated.tags)
    for p in [port, *bulk]:
        await neutron.delete_port(p.id)
        await neutron.delete_port(p.id)  # again: still fine
    with pytest.raises(errors.NotFoundError, match=port.id):
        await neutron.get_port(port.id)


async def test_vifs_of_ports_on_one_network_read_it_once_within_the_ttl(
        cloud_config: settings.KuryrSettings, network: resources.Network) -> None:
    calls: list[str] = []
    counted = client.Neutron(connecting.connect(cloud_config.neutron),
                             cluster_id=cloud_config.cluster_id, vif_cache_ttl=30,
                             observer=lambda operation, result, seconds: calls.append(operation))
    try:
        ports = [await counted.create_port(network.id, tags=[TEST_TAG]) for _ in range(3)]
        calls.clear()
        vifs = [await counted.vif_for_port(p) for p in ports]
        # One read of the network and of each of its two subnets, for three ports.
        assert sorted(calls) == ["find network", "find subnet", "find subnet"], calls
        assert {v.mtu for v in vifs} == {network.mtu}
        assert all(len(v.gateways()) == 2 for v in vifs)
        counted.vif_cache_ttl = 0  # off: read for every port
        calls.clear()
        await counted.vif_for_port(ports[0])
        assert sorted(calls) == ["find network", "find subnet", "find subnet"], calls
    finally:
        for port in ports:
            await counted.delete_port(port.id)
        counted.close()


async def test_vif_of_a_port(neutron: client.Neutron, network: resources.Network) -> None:
    port = await neutron.create_port(network.id, tags=[TEST_TAG])
    vif = await neutron.vif_for_port(port)
    assert vif.port_id == port.id and vif.mac == port.mac and vif.mtu == network.mtu
    assert sorted(f.address.version for f in vif.fixed_ips) == [4, 6]
    assert all(f.address.network.prefixlen in (24, 64) for f in vif.fixed_ips)
    assert len(vif.gateways()) == 2
    await neutron.delete_port(port.id)


async def test_subnet_pool_router_and_interface(neutron: client.Neutron,
                                                cloud_config: settings.KuryrSettings) -> None:
    pool = await neutron.create_subnet_pool(f"kt-{RUN_ID}-pool", prefixes=["10.240.0.0/16"],
                                            default_prefix_length=26, tags=[TEST_TAG])
    router = await neutron.create_router(f"kt-{RUN_ID}-router", tags=[TEST_TAG])
    network = await neutron.create_network(f"kt-{RUN_ID}-pooled", tags=[TEST_TAG])
    try:
        assert _base(neutron) <= set(pool.tags) and _base(neutron) <= set(router.tags)
        subnet = await neutron.create_subnet(network.id, subnet_pool_id=pool.id, ip_version=4,
                                             tags=[TEST_TAG])
        assert subnet.cidr.endswith("/26") and subnet.cidr.startswith("10.240.")
        await neutron.add_router_interface(router.id, subnet.id)
        ports = await neutron.list_ports(device_id=router.id)
        assert any(f.subnet_id == subnet.id for p in ports for f in p.fixed_ips)
        await neutron.remove_router_interface(router.id, subnet.id)
        await neutron.remove_router_interface(router.id, subnet.id)  # idempotent
        await neutron.delete_subnet(subnet.id)
    finally:
        await remove_network(neutron, cloud_config, network.id)
        await neutron.delete_router(router.id)
        await neutron.delete_subnet_pool(pool.id)


async def test_security_groups_and_rules(neutron: client.Neutron) -> None:
    group = await neutron.create_security_group(f"kt-{RUN_ID}-sg", tags=[TEST_TAG])
    try:
        assert _base(neutron) <= set(group.tags)
        rule = await neutron.create_security_group_rule(group.id, protocol="tcp",
                                                        port_range_min=80, port_range_max=80,
                                                        remote_ip_prefix="0.0.0.0/0")
        assert (rule.protocol, rule.port_range_min, rule.direction) == ("tcp", 80, "ingress")
        with pytest.raises(errors.PermanentError, match=r"SecurityGroupRuleExists|already exists"):
            await neutron.create_security_group_rule(group.id, protocol="tcp", port_range_min=80,
                                                     port_range_max=80,
                                                     remote_ip_prefix="0.0.0.0/0")
        assert rule.id in (await neutron.get_security_group(group.id)).rule_ids
        await neutron.delete_security_group_rule(rule.id)
        await neutron.delete_security_group_rule(rule.id)
    finally:
        await neutron.delete_security_group(group.id)
    await neutron.delete_security_group(group.id)


async def test_trunks_and_subports(neutron: client.Neutron, network: resources.Network) -> None:
    parent = await neutron.create_port(network.id, tags=[TEST_TAG])
    child = await neutron.create_port(network.id, tags=[TEST_TAG])
    trunk = await neutron.create_trunk(parent.id, name=f"kt-{RUN_ID}-trunk", tags=[TEST_TAG])
    try:
        assert _base(neutron) <= set(trunk.tags)
        trunk = await neutron.add_subports(trunk.id, [
            {"port_id": child.id, "segmentation_type": "vlan", "segmentation_id": 101}])
        assert [s["port_id"] for s in (await neutron.get_trunk(trunk.id)).sub_ports] == [child.id]
        await neutron.remove_subports(trunk.id, [child.id])
        assert (await neutron.get_trunk(trunk.id)).sub_ports == ()
    finally:
        await neutron.delete_trunk(trunk.id)
        await neutron.delete_port(child.id)
        await neutron.delete_port(parent.id)


async def test_add_tags(neutron: client.Neutron, network: resources.Network) -> None:
    await neutron.add_tags("network", network.id, [tagging.owner("extra", "1")])
    assert tagging.value_of((await neutron.get_network(network.id)).tags, "extra") == "1"


async def test_quota_exhaustion_is_permanent(neutron: client.Neutron,
                                             cloud_config: settings.KuryrSettings) -> None:
    project = uuid.uuid4().hex
    net = await neutron.create_network(f"kt-{RUN_ID}-quota", tags=[TEST_TAG], project_id=project)
    conn: openstack.connection.Connection = connecting.connect(cloud_config.neutron)
    try:
        await neutron.create_subnet(net.id, cidr="10.250.0.0/28", tags=[TEST_TAG])
        conn.network.update_quota(project, ports=1)
        first = await neutron.create_port(net.id, tags=[TEST_TAG], project_id=project)
        with pytest.raises(errors.QuotaExceededError, match=r"[Qq]uota"):
            await neutron.create_port(net.id, tags=[TEST_TAG], project_id=project)
        await neutron.delete_port(first.id)
    finally:
        for p in await neutron.list_ports(network_id=net.id):
            await neutron.delete_port(p.id)
        for s in await neutron.list_subnets(network_id=net.id):
            await neutron.delete_subnet(s.id)
        await neutron.delete_network(net.id)
        conn.network.delete_quota(project)
        conn.close()


async def test_missing_things_are_not_found(neutron: client.Neutron) -> None:
    with pytest.raises(errors.NotFoundError, match="no-such-net"):
        await neutron.get_network(f"no-such-net-{RUN_ID}")
    with pytest.raises(errors.NotFoundError):
        await neutron.get_port(str(uuid.uuid4()))
    with pytest.raises(errors.PermanentError, match=r"[Ii]nvalid|400"):
        await neutron.create_subnet(str(uuid.uuid4()), cidr="not-a-cidr")


async def test_neutron_down_is_temporary_with_a_hint() -> None:
    down = settings.NeutronSettings(endpoint_override="http://127.0.0.1:9/", auth_type="none",
                                    timeout=3)
    facade = client.Neutron(connecting.connect(down), cluster_id="t")
    try:
        with pytest.raises(errors.TemporaryError, match="cannot reach Neutron"):
            await facade.list_networks()
    finally:
        facade.close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a Neutron that
    hangs); yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


async def test_a_hanging_neutron_never_blocks_the_event_loop() -> None:
    """The SDK discovers Neutron's endpoint on first use, blocking for up to its timeout:
    that must happen in the facade's threads, or CNI, health and informers stall with it."""
    with silent_server() as url:
        hanging = settings.NeutronSettings(endpoint_override=url, auth_type="none", timeout=2)
        facade = client.Neutron(connecting.connect(hanging), cluster_id="t")
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        try:
            started = time.monotonic()
            with pytest.raises(errors.TemporaryError):
                await facade.list_networks()
            took = time.monotonic() - started
        finally:
            ticker.cancel()
            facade.close()
        assert took >= 1.5, f"the call did not wait for the hanging Neutron ({took:.2f} s)"
        blocked = max(gaps, default=took)  # no tick at all: blocked the whole time
        assert blocked < 0.5, f"the event loop was blocked for {blocked:.2f} s"


class ResettingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host:port). After ``arm()``, the next
    request that arrives, on any connection, is answered with a TCP reset, as when a server
    has closed a pooled keep-alive connection; ``reset`` holds the request lines so answered."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.reset: list[bytes] = []
        self._armed = False

    def arm(self) -> None:
        self._armed = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def to_neutron() -> None:
            while data := await reader.read(65536):
                if self._armed:
                    self._armed = False
                    self.reset.append(data.split(b"\r\n", 1)[0])
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    break
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def from_neutron() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(to_neutron(), from_neutron())

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Serve for the block, from a thread of its own (the SDK blocks the test's event
        loop while it discovers the endpoint); yields the proxy's URL."""
        loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[str] = concurrent.futures.Future()

        def serve() -> None:
            async def start() -> None:
                server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                started.set_result(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
                await asyncio.Event().wait()  # until the loop stops

            with contextlib.suppress(RuntimeError):  # the loop stopped under start()
                loop.run_until_complete(start())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield started.result(timeout=5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)


async def test_a_reset_connection_repeats_reads_and_deletes_never_creates(
        neutron: client.Neutron, network: resources.Network) -> None:
    proxy = ResettingProxy(f"127.0.0.1:{layout.NEUTRON_API_PORT}")
    with proxy.running() as url:
        config = settings.NeutronSettings(endpoint_override=url, auth_type="none", timeout=10)
        facade = client.Neutron(connecting.connect(config), cluster_id=neutron.cluster_id)
        try:
            assert network.id in {n.id for n in await facade.list_networks(tags=[TEST_TAG])}
            # Reads and deletes meet a reset, then go through on a new connection.
            proxy.arm()
            assert network.id in {n.id for n in await facade.list_networks(tags=[TEST_TAG])}
            proxy.arm()
            assert (await facade.get_network(network.id)).id == network.id
            port = await neutron.create_port(network.id, tags=[TEST_TAG])
            proxy.arm()
            await facade.delete_port(port.id)
            with pytest.raises(errors.NotFoundError):
                await neutron.get_port(port.id)
            assert [r.split(b" ")[0] for r in proxy.reset] == [b"GET", b"GET", b"DELETE"]
            # A create is never sent twice: it fails with a TemporaryError; no port was made.
            proxy.arm()
            with pytest.raises(errors.TemporaryError, match="cannot reach Neutron"):
                await facade.create_port(network.id, tags=[TEST_TAG])
            assert proxy.reset[-1].startswith(b"POST ")
            assert await neutron.list_ports(network_id=network.id, tags=[TEST_TAG]) == []
        finally:
            facade.close()


async def test_wait_for_status_is_bounded(neutron: client.Neutron,
                                          network: resources.Network) -> None:
    port = await neutron.create_port(network.id, tags=[TEST_TAG])  # never plugged: stays DOWN
    with pytest.raises(errors.TemporaryError, match=r"DOWN, not ACTIVE, after 0\.3 s"):
        await neutron.wait_port_status(port.id, "ACTIVE", timeout=0.3)
    await neutron.delete_port(port.id)


def test_unconfigured_neutron_says_how_to_configure() -> None:
    with pytest.raises(errors.ConfigError, match="kuryr cloud up"):
        connecting.connect(settings.NeutronSettings())


@contextlib.asynccontextmanager
async def _external_network(cloud_config: settings.KuryrSettings) -> AsyncIterator[str]:
    """A tagged external network of the test's own (no traffic needed: Neutron alone decides
    whether a floating IP can be made), with a subnet in 100.64.<n>.0/24."""
    n = uuid.uuid4().int % 200 + 20
    conn: openstack.connection.Connection = connecting.connect(cloud_config.neutron)
    net = conn.network.create_network(name=f"kt-{RUN_ID}-external", is_router_external=True)
    try:
        conn.network.set_tags(net, [TEST_TAG])
        conn.network.create_subnet(network_id=net.id, cidr=f"100.64.{n}.0/24", ip_version=4,
                                   is_dhcp_enabled=False)
        yield str(net.id)
    finally:
        for fip in conn.network.ips(floating_network_id=net.id):
            conn.network.delete_ip(fip)
        for subnet in conn.network.subnets(network_id=net.id):
            conn.network.delete_subnet(subnet)
        conn.network.delete_network(net)
        conn.close()


async def test_floating_ips_and_router_gateway(neutron: client.Neutron,
                                               network: resources.Network,
                                               cloud_config: settings.KuryrSettings) -> None:
    v4 = next(s for s in await neutron.list_subnets(network_id=network.id) if s.ip_version == 4)
    router = await neutron.create_router(f"kt-{RUN_ID}-fip-router", tags=[TEST_TAG])
    async with _external_network(cloud_config) as external_id:
        try:
            await neutron.set_router_gateway(router.id, external_id)
            assert (await neutron.get_router(router.id)).external_network_id == external_id
            await neutron.add_router_interface(router.id, v4.id)
            port = await neutron.create_port(network.id, tags=[TEST_TAG])
            fixed = next(f.ip_address for f in port.fixed_ips if f.subnet_id == v4.id)
            fip = await neutron.create_floating_ip(
                external_id, port_id=port.id, tags=[TEST_TAG], description="kt: a service")
            assert (fip.port_id, fip.fixed_ip_address) == (port.id, fixed)
            assert fip.floating_network_id == external_id and fip.description == "kt: a service"
            assert _base(neutron) | {TEST_TAG} <= set(fip.tags)
            found = await neutron.find_floating_ip(fip.floating_ip_address)
            assert found is not None and found.id == fip.id
            assert await neutron.find_floating_ip("192.0.2.254") is None
            by_port = await neutron.list_floating_ips(tags=[TEST_TAG], port_id=port.id)
            assert [f.id for f in by_port] == [fip.id]

            loose = await neutron.update_floating_ip(fip.id, port_id=None)
            assert (loose.port_id, loose.fixed_ip_address) == (None, None)
            assert (await neutron.get_floating_ip(fip.id)).port_id is None
            again = await neutron.update_floating_ip(fip.id, port_id=port.id)
            assert again.port_id == port.id
            with pytest.raises(errors.PermanentError, match=r"gateway|floating|[Ii]n use"):
                await neutron.clear_router_gateway(router.id)  # a floating IP still uses it

            await neutron.delete_floating_ip(fip.id)
            await neutron.delete_floating_ip(fip.id)  # idempotent
            with pytest.raises(errors.NotFoundError, match=fip.id):
                await neutron.get_floating_ip(fip.id)
            await neutron.clear_router_gateway(router.id)
            await neutron.clear_router_gateway(router.id)  # idempotent
            assert (await neutron.get_router(router.id)).external_network_id is None
        finally:
            for left in await neutron.list_floating_ips(floating_network_id=external_id):
                await neutron.delete_floating_ip(left.id)
            await neutron.remove_router_interface(router.id, v4.id)
            await neutron.clear_router_gateway(router.id)
            await neutron.delete_router(router.id)


async def test_security_group_listing_and_rule_descriptions(neutron: client.Neutron) -> None:
    group = await neutron.create_security_group(f"kt-{RUN_ID}-listed", tags=[TEST_TAG],
                                                description="kt: listed")
    peer = await neutron.create_security_group(f"kt-{RUN_ID}-peer", tags=[TEST_TAG])
    try:
        assert {group.id, peer.id} <= {g.id for g in
                                       await neutron.list_security_groups(tags=[TEST_TAG])}
        [named] = await neutron.list_security_groups(name=group.name)
        assert (named.id, named.description) == (group.id, "kt: listed")
        assert named.project_id == group.project_id != ""
        by_prefix = await neutron.create_security_group_rule(
            group.id, protocol="udp", port_range_min=53, port_range_max=53,
            remote_ip_prefix="10.0.0.0/8", description="kt: dns")
        by_group = await neutron.create_security_group_rule(
            group.id, ethertype="IPv6", remote_group_id=peer.id)
        rules = {r.id: r for r in
                 await neutron.list_security_group_rules(security_group_id=group.id)}
        assert rules[by_prefix.id].description == "kt: dns"
        assert rules[by_prefix.id].remote_ip_prefix == "10.0.0.0/8"
        assert (rules[by_group.id].remote_group_id, rules[by_group.id].ethertype) == (
            peer.id, "IPv6")
        # Neutron's egress defaults come with a new group; every rule listed is the group's.
        assert all(r.security_group_id == group.id for r in rules.values())
        assert any(r.direction == "egress" for r in rules.values())
    finally:
        await neutron.delete_security_group(group.id)
        await neutron.delete_security_group(peer.id)
