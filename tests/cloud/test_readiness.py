"""When a plugged port counts as ready (``[binding] readiness``): on this node's ovn-controller
word (``ovn-installed`` on the OVS Interface, learnt from the OVSDB IDL) rather than Neutron's
later ACTIVE, and never too early: the first packet sent the instant ``attach`` returns
arrives, every time."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest

from kuryr import binding, errors, model, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.linux import ovs
from kuryr.neutron import client, resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, leftovers
from tests.conftest import netns_run

RUNS = 25


def _ipv4(attachment: lifecycle.Attachment) -> str:
    return next(str(f.address.ip) for f in attachment.vif.fixed_ips if f.address.version == 4)


def _one_ping(netns: str, address: str) -> bool:
    """One echo request, no retry: whether its reply came back within 2 s."""
    return netns_run(netns, "ping", "-c", "1", "-W", "2", address).returncode == 0


async def test_first_packet_after_attach_arrives_every_time(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    assert await binder.uses_ovn(), "the local cloud runs ovn-controller: readiness is OVN's"
    host = cloud_config.binding.host
    peer = await lifecycle.attach(neutron, binders, network_id=network.id, netns=make_netns(),
                                  ifname="eth0", host=host, tags=[TEST_TAG])
    lost: list[str] = []
    before_active = 0
    seconds: list[float] = []
    used: set[str] = set()
    for run in range(RUNS):
        netns = make_netns()
        started = time.monotonic()
        new = await lifecycle.attach(neutron, binders, network_id=network.id, netns=netns,
                                     ifname="eth0", host=host, tags=[TEST_TAG])
        seconds.append(time.monotonic() - started)
        # The instant attach returns: one packet out of the new port, one into it.
        reused = " (an address a deleted port held)" if _ipv4(new) in used else ""
        used.add(_ipv4(new))
        if not await asyncio.to_thread(_one_ping, netns, _ipv4(peer)):
            lost.append(f"run {run}: new {_ipv4(new)}{reused} -> peer")
        if not await asyncio.to_thread(_one_ping, peer.netns, _ipv4(new)):
            lost.append(f"run {run}: peer -> new {_ipv4(new)}{reused}")
        ids = await asyncio.to_thread(binder.ovsdb.port_external_ids,
                                      ovs_binding.host_ifname(new.port.id))
        assert ids is not None and ids.get(ovs.INSTALLED_KEY) == "true"
        if not (await neutron.get_port(new.port.id)).is_active:
            before_active += 1
        await lifecycle.detach(neutron, binders, port_id=new.port.id)
        assert await leftovers(binder, new.port.id) == []
    seconds.sort()
    print(f"attach: median {seconds[len(seconds) // 2] * 1000:.0f} ms, max "
          f"{seconds[-1] * 1000:.0f} ms; Neutron not yet ACTIVE when looked at after the "
          f"pings in {before_active}/{RUNS} runs")
    assert lost == [], f"first packets lost after attach returned: {lost}"


async def test_neutron_readiness_waits_for_active(
        neutron: client.Neutron, network: resources.Network,
        cloud_config: settings.KuryrSettings, make_netns: Callable[[], str]) -> None:
    config = dataclasses.replace(cloud_config.binding, readiness="neutron")
    binders = binding.binders(config)
    try:
        assert not await binders["ovs"].wait_ready(
            _stub(), timeout=1), "readiness = neutron: the binder has no signal of its own"
        att = await lifecycle.attach(neutron, binders, network_id=network.id,
                                     netns=make_netns(), ifname="eth0",
                                     host=config.host, tags=[TEST_TAG])
        assert (await neutron.get_port(att.port.id)).is_active
        await lifecycle.detach(neutron, binders, port_id=att.port.id)
    finally:
        for b in binders.values():
            b.close()


async def test_port_ovn_never_installs_times_out_clearly_and_leaves_nothing(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], make_netns: Callable[[], str]) -> None:
    """A port bound to another host is never claimed by this node's ovn-controller."""
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    port = await neutron.create_port(network.id, tags=[TEST_TAG], host_id="kt-elsewhere",
                                     device_owner=lifecycle.DEVICE_OWNER)
    try:
        vif = await neutron.vif_for_port(port)
        netns = make_netns()
        await binder.plug(vif, netns=netns, ifname="eth0")
        started = time.monotonic()
        with pytest.raises(errors.TemporaryError, match="not installed by this node's "
                           "ovn-controller within 2 s"):
            await binder.wait_ready(vif, timeout=2)
        assert time.monotonic() - started < 4
        await binder.unplug(vif)
        assert await leftovers(binder, port.id) == []
    finally:
        await neutron.delete_port(port.id)


async def test_readiness_setting_is_validated() -> None:
    with pytest.raises(errors.ConfigError, match="readiness = 'fast': must be one of auto, "
                       "ovn, neutron"):
        settings.BindingSettings(readiness="fast")


def _stub() -> model.VIF:
    return model.VIF(port_id="0" * 36, mac="", network_id="", mtu=0, fixed_ips=(),
                               subnets=(), binding_type="ovs")
