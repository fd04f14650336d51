"""Neutron ports plugged into real network namespaces on the local cloud: ACTIVE in Neutron,
addresses and routes where a user looks for them, ping/ping6 and TCP through OVN, security
groups enforced, and nothing left after unplugging."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kuryr import binding, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.linux import interfaces
from kuryr.neutron import client, resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, leftovers
from tests.conftest import RUN_ID, netns_run
from tests.support import peers


def _ip(attachment: lifecycle.Attachment, version: int) -> str:
    return next(str(f.address.ip) for f in attachment.vif.fixed_ips if f.address.version == version)


async def test_two_sandboxes_talk_through_ovn_and_security_groups_apply(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    host = cloud_config.binding.host
    ns_a, ns_b = make_netns(), make_netns()
    a = await lifecycle.attach(neutron, binders, network_id=network.id, netns=ns_a,
                               ifname="eth0", host=host, tags=[TEST_TAG])
    b = await lifecycle.attach(neutron, binders, network_id=network.id, netns=ns_b,
                               ifname="eth0", host=host, tags=[TEST_TAG])

    # Neutron: ACTIVE (soon: attach answers on ovn-controller's word), bound to this host,
    # owned by kuryr.
    for att in (a, b):
        port = await neutron.wait_port_status(att.port.id, "ACTIVE", timeout=30)
        assert port.status == "ACTIVE"
        assert port.host_id == host
        assert port.device_owner == "compute:kuryr"

    # The namespace: the port's MAC, every fixed IP with its prefix, the network's MTU,
    # default routes via the gateways, TX checksum offload off.
    seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=a.netns)
    assert seen is not None
    assert seen["mac"] == a.port.mac
    assert seen["mtu"] == network.mtu
    assert sorted(seen["addresses"]) == sorted(str(f.address) for f in a.vif.fixed_ips)
    assert {r.split(" via ")[0] for r in seen["routes"]} >= {"0.0.0.0/0", "::/0"}
    assert "tx-checksumming: off" in netns_run(a.netns, "ethtool", "-k", "eth0").stdout

    # The host: the tap on br-int with what OVN needs.
    external_ids = await asyncio.to_thread(
        binders["ovs"].ovsdb.port_external_ids,  # type: ignore[attr-defined]
        ovs_binding.host_ifname(a.port.id))
    assert external_ids is not None
    assert external_ids["iface-id"] == a.port.id
    assert external_ids["attached-mac"] == a.port.mac
    assert external_ids["iface-status"] == "active"
    assert external_ids["owner"] == "kuryr"

    # Packets: ping and ping6 both ways, TCP data both ways.
    for src, dst in ((a, b), (b, a)):
        assert peers.ping(src.netns, _ip(dst, 4)), f"ping {src.netns} -> {_ip(dst, 4)}"
        assert peers.ping_eventually(src.netns, _ip(dst, 6), expect=True), "ping6"
        ok, said = peers.tcp_exchange(dst.netns, src.netns, _ip(dst, 4), 5001)
        assert ok, said
    ok, said = peers.tcp_exchange(b.netns, a.netns, _ip(b, 6), 5002)
    assert ok, said

    # Security group on b allowing only TCP 8080 in: ICMP blocked, 8080 open, 8081 closed.
    group = await neutron.create_security_group(f"kt-{RUN_ID}-only8080", tags=[TEST_TAG])
    try:
        for ethertype, prefix in (("IPv4", "0.0.0.0/0"), ("IPv6", "::/0")):
            await neutron.create_security_group_rule(
                group.id, ethertype=ethertype, protocol="tcp", port_range_min=8080,
                port_range_max=8080, remote_ip_prefix=prefix)
        await neutron.update_port(b.port.id, security_group_ids=[group.id])
        assert peers.ping_eventually(a.netns, _ip(b, 4), expect=False), "ICMP still passes"
        ok, said = peers.tcp_exchange(b.netns, a.netns, _ip(b, 4), 8080)
        assert ok, f"TCP 8080 should be open: {said}"
        ok, said = peers.tcp_exchange(b.netns, a.netns, _ip(b, 4), 8081, nbytes=10, timeout=2)
        assert not ok and "connect failed" in said, f"TCP 8081 should be closed: {said}"

        # Unplug and delete: no veth, no OVS port, no Neutron port.
        binder = binders["ovs"]
        assert isinstance(binder, ovs_binding.OvsBinder)
        for att in (a, b):
            await lifecycle.detach(neutron, binders, port_id=att.port.id, netns=att.netns,
                                   ifname="eth0")
            await lifecycle.detach(neutron, binders, port_id=att.port.id)  # idempotent
            assert await leftovers(binder, att.port.id) == []
            assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=att.netns)
        remaining = await neutron.list_ports(network_id=network.id, device_owner="compute:kuryr")
        assert remaining == []
    finally:
        await neutron.delete_security_group(group.id)


async def test_plug_is_idempotent(neutron: client.Neutron, network: resources.Network,
                                  binders: dict[str, binding.Binder],
                                  cloud_config: settings.KuryrSettings,
                                  make_netns: Callable[[], str]) -> None:
    ns = make_netns()
    att = await lifecycle.attach(neutron, binders, network_id=network.id, netns=ns,
                                 ifname="eth1", host=cloud_config.binding.host, tags=[TEST_TAG])
    again = await lifecycle.plug_existing(neutron, binders, port_id=att.port.id, netns=ns,
                                          ifname="eth1", host=cloud_config.binding.host)
    assert again.vif.is_active
    assert (await neutron.wait_port_status(att.port.id, "ACTIVE", timeout=30)).is_active
    seen = await asyncio.to_thread(interfaces.describe, "eth1", netns=ns)
    assert seen is not None and sorted(seen["addresses"]) == sorted(
        str(f.address) for f in att.vif.fixed_ips)
    await lifecycle.detach(neutron, binders, port_id=att.port.id)
