"""Failures while plugging: each gets a clear error and leaves no Neutron port, veth or OVS
port behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest

from kuryr import binding, errors, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.neutron import client, connecting, resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, leftovers


async def _kuryr_ports(neutron: client.Neutron, network: resources.Network) -> list[str]:
    return [p.id for p in await neutron.list_ports(network_id=network.id, tags=[TEST_TAG])]


async def test_port_that_does_not_exist(neutron: client.Neutron,
                                        binders: dict[str, binding.Binder],
                                        cloud_config: settings.KuryrSettings,
                                        make_netns: Callable[[], str]) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(errors.NotFoundError, match=missing):
        await lifecycle.plug_existing(neutron, binders, port_id=missing, netns=make_netns(),
                                      ifname="eth0", host=cloud_config.binding.host)
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    assert await leftovers(binder, missing) == []


async def test_namespace_that_does_not_exist(neutron: client.Neutron,
                                             network: resources.Network,
                                             binders: dict[str, binding.Binder],
                                             cloud_config: settings.KuryrSettings) -> None:
    with pytest.raises(errors.NamespaceNotFoundError, match="kt-no-such-netns"):
        await lifecycle.attach(neutron, binders, network_id=network.id, netns="kt-no-such-netns",
                               ifname="eth0", host=cloud_config.binding.host, tags=[TEST_TAG])
    assert await _kuryr_ports(neutron, network) == []


async def test_neutron_that_is_down(binders: dict[str, binding.Binder],
                                    make_netns: Callable[[], str]) -> None:
    down = client.Neutron(connecting.connect(settings.NeutronSettings(
        endpoint_override="http://127.0.0.1:9/", auth_type="none", timeout=3)), cluster_id="t")
    ns = make_netns()
    try:
        with pytest.raises(errors.TemporaryError, match="cannot reach Neutron"):
            await lifecycle.attach(down, binders, network_id=str(uuid.uuid4()), netns=ns,
                                   ifname="eth0", host="h", tags=[TEST_TAG])
    finally:
        down.close()
    from kuryr.linux import interfaces

    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)


async def test_ovs_that_is_down_rolls_back_port_and_veth(
        neutron: client.Neutron, network: resources.Network,
        cloud_config: settings.KuryrSettings, make_netns: Callable[[], str]) -> None:
    broken = settings.BindingSettings(host=cloud_config.binding.host,
                                      ovsdb_connection="unix:/nonexistent/db.sock",
                                      ovsdb_timeout=2)
    binders = binding.binders(broken)
    ns = make_netns()
    try:
        with pytest.raises(errors.BindingError, match="cannot reach Open vSwitch"):
            await lifecycle.attach(neutron, binders, network_id=network.id, netns=ns,
                                   ifname="eth0", host=cloud_config.binding.host,
                                   tags=[TEST_TAG])
    finally:
        for b in binders.values():
            b.close()
    from kuryr.linux import interfaces

    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)
    assert await _kuryr_ports(neutron, network) == []


async def test_port_not_active_in_time_rolls_back_everything(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    ns = make_netns()
    with pytest.raises(errors.TemporaryError, match="not installed by this node's ovn-controller"):
        await lifecycle.attach(neutron, binders, network_id=network.id, netns=ns, ifname="eth0",
                               host=cloud_config.binding.host, tags=[TEST_TAG],
                               active_timeout=0.0)
    from kuryr.linux import interfaces

    assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)
    assert await _kuryr_ports(neutron, network) == []
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    assert binder.ovsdb.owned_ports(cloud_config.binding.ovs_bridge).keys().isdisjoint(
        {ovs_binding.host_ifname(p) for p in await _kuryr_ports(neutron, network)})


async def test_bad_interface_name_creates_nothing(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    with pytest.raises(errors.PermanentError, match="invalid interface name"):
        await lifecycle.attach(neutron, binders, network_id=network.id, netns=make_netns(),
                               ifname="this-name-is-too-long", host=cloud_config.binding.host,
                               tags=[TEST_TAG])
    assert await _kuryr_ports(neutron, network) == []


async def test_a_cancelled_attach_leaves_nothing_at_any_moment(
        neutron: client.Neutron, network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str]) -> None:
    """A runtime that gives up cancels ADD wherever it is: in the port's create (whose thread
    goes on and makes the port anyway), in the plug (whose thread goes on plugging), in the
    wait for readiness. Each time, once things settle, nothing is left."""
    binder = binders["ovs"]
    assert isinstance(binder, ovs_binding.OvsBinder)
    tag = f"kt-cancel-{uuid.uuid4().hex[:8]}"
    made: set[str] = set()
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8):
        attaching = asyncio.create_task(lifecycle.attach(
            neutron, binders, network_id=network.id, netns=make_netns(), ifname="eth0",
            host=cloud_config.binding.host, tags=[TEST_TAG, tag]))
        await asyncio.sleep(delay)
        attaching.cancel()
        try:
            att = await attaching
        except asyncio.CancelledError:
            pass
        else:  # done before the cancel: detach it as its runtime's DEL would
            await lifecycle.detach(neutron, binders, port_id=att.port.id)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        ports = await neutron.list_ports(network_id=network.id, tags=[tag])
        made |= {p.id for p in ports}
        if not ports or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert ports == [], f"ports left by cancelled attaches: {[p.id for p in ports]}"
    for port_id in made:
        assert await leftovers(binder, port_id) == []
