"""Fixtures on the real local Neutron: a tagged test network with an IPv4 and an IPv6 subnet,
binders wired to the cloud's OVS, and a leak check that nothing a test made is left behind."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from kuryr import binding, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.linux import interfaces
from kuryr.neutron import client, resources, tagging
from tests.conftest import RUN_ID

TEST_TAG = tagging.owner("test", RUN_ID)


@pytest.fixture
def binders(cloud_config: settings.KuryrSettings) -> Iterator[dict[str, binding.Binder]]:
    made = binding.binders(cloud_config.binding)
    yield made
    for b in made.values():
        b.close()


@pytest.fixture
async def network(neutron: client.Neutron, cloud_config: settings.KuryrSettings
                  ) -> AsyncIterator[resources.Network]:
    """A network with 10.<n>.0.0/24 and fd00:<n>::/64; ports, plugs, subnets and network are
    removed at teardown whatever the test did."""
    n = uuid.uuid4().int % 200 + 20
    net = await neutron.create_network(f"kt-{RUN_ID}-{n}", tags=[TEST_TAG])
    try:
        await neutron.create_subnet(net.id, cidr=f"10.{n}.0.0/24", ip_version=4, tags=[TEST_TAG])
        await neutron.create_subnet(net.id, cidr=f"fd00:{n}::/64", ip_version=6, tags=[TEST_TAG])
        yield await neutron.get_network(net.id)
    finally:
        await remove_network(neutron, cloud_config, net.id)


async def remove_network(neutron: client.Neutron, cloud_config: settings.KuryrSettings,
                         network_id: str) -> None:
    """Unplug and delete every container port of a network, then its subnets and itself."""
    binder = ovs_binding.OvsBinder(cloud_config.binding)
    try:
        for port in await neutron.list_ports(network_id=network_id):
            if port.device_owner.startswith("compute:") or not port.device_owner:
                await asyncio.to_thread(binder.unplug_sync, port.id)
                await neutron.delete_port(port.id)
    finally:
        binder.close()
    for subnet in await neutron.list_subnets(network_id=network_id):
        await neutron.delete_subnet(subnet.id)
    await neutron.delete_network(network_id)


async def leftovers(binder: ovs_binding.OvsBinder, port_id: str) -> list[str]:
    """What is left on the host of a port: its tap and its OVS port."""
    return await asyncio.to_thread(_leftovers, binder, port_id)


def _leftovers(binder: ovs_binding.OvsBinder, port_id: str) -> list[str]:
    host = ovs_binding.host_ifname(port_id)
    found = []
    if interfaces.link_exists(host):
        found.append(f"link {host}")
    if binder.ovsdb.port_external_ids(host) is not None:
        found.append(f"OVS port {host}")
    return found
