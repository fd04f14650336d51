"""The warm pool found again after a crash (issue 15): a pool port handed to a container whose
owner tags had not reached Neutron when its daemon died is the container's, not a free pool
port. The restarted daemon keeps it plugged and never deletes it nor hands it to another
container; with the record the hand-over left on its OVS Interface (``recorded``) it gives it
back to its container, whose DEL then releases it; without one (``unrecorded``: a taker that
recorded nothing) it keeps it as it is.

A real ``kuryr daemon`` with the pool on, SIGKILLed right after a pooled ADD answered, then
started again on the same host: the state is what Neutron, OVS and the kernel hold, nothing is
mocked. Whether the kill beat the background retag to Neutron is a race, so when the retag
did land the test puts the pool tags back, which is exactly what a kill before it leaves (and
for ``unrecorded`` it blanks the record, which is what a taker without one leaves).
"""

from __future__ import annotations

import asyncio
import functools
import pathlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from kuryr import settings
from kuryr.binding import ovs as ovs_binding
from kuryr.daemon import standalone
from kuryr.linux import interfaces
from kuryr.neutron import client, resources, tagging
from kuryr.pools import warm
from tests.cloud.conftest import leftovers, remove_network
from tests.cloud.test_cni_harness import container_id, executable, facade, make_network, ovs
from tests.support import cni

__all__ = ["executable", "facade", "ovs"]  # fixtures


@pytest.fixture
async def pool_net(facade: client.Neutron, cloud_config: settings.KuryrSettings
                   ) -> AsyncIterator[resources.Network]:
    net = await make_network(facade, v6=False)
    try:
        yield net
    finally:
        await remove_network(facade, cloud_config, net.id)


async def _ready_pool_ports(neutron: client.Neutron, network_id: str, host: str,
                            count: int) -> list[resources.Port]:
    pool_tag = tagging.owner(warm.TAG_POOL_HOST, host)
    deadline = time.monotonic() + 90
    while True:
        found = [p for p in await neutron.list_ports(network_id=network_id, tags=[pool_tag])
                 if p.status == "ACTIVE"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.3)


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
async def test_rebuild_keeps_a_port_taken_before_its_retag_landed(
        recorded: bool, executable: pathlib.Path, pool_net: resources.Network,
        facade: client.Neutron, ovs: ovs_binding.OvsBinder, cloud_config: settings.KuryrSettings,
        tmp_path: pathlib.Path, make_netns: Callable[[], str]) -> None:
    host = cloud_config.binding.host
    env = {"KURYR_CNI_DAEMON_POOL_SIZE": "2"}
    victim = cni.DaemonProcess(tmp_path, config_file=cloud_config.source, pool=True, env=env)
    conf = cni.netconf("1.0.0", pool_net.name, socket_path=victim.socket, name="kuryr-rebuild")
    warmup, cid = container_id(), container_id()
    warm_ns, ns = f"/run/netns/{make_netns()}", f"/run/netns/{make_netns()}"
    with cni.running(victim):
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=warmup, netns=warm_ns)
        assert rc == 0, out  # a cold port; the pool of this network starts filling
        ready = await _ready_pool_ports(facade, pool_net.id, host, 2)
        assert len(ready) == 2, "the pool did not fill"
        pool_tags = {p.id: [t for t in p.tags if t.startswith("kuryr-pool")] for p in ready}
        rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                          container_id=cid, netns=ns)
        victim.kill()  # right after ADD answered: its background retag may not have landed
    assert rc == 0 and out is not None, out
    mac = out["interfaces"][0]["mac"]
    (port,) = [p for p in ready if p.mac == mac]
    await asyncio.sleep(2)  # a retag request sent before the kill has reached Neutron by now
    if tagging.owner(standalone.TAG_CONTAINER, cid) in (await facade.get_port(port.id)).tags:
        # The retag beat the kill: put back what a kill before it leaves in Neutron.
        await facade.update_port(port.id, tags=pool_tags[port.id])
    assert tagging.owner(standalone.TAG_CONTAINER, cid) not in \
        (await facade.get_port(port.id)).tags
    if not recorded:
        # What a taker that recorded nothing leaves (a daemon of before the fix, or a record
        # that could not be written): only the kernel and OVS show the port is in use.
        await asyncio.to_thread(ovs.ovsdb.set_external_ids, ovs_binding.host_ifname(port.id),
                                {warm.OWNER_RECORD: ""})

    with cni.running(cni.DaemonProcess(tmp_path, config_file=cloud_config.source, pool=True,
                                       env=env)) as again:
        # The pool was rebuilt before the daemon served: the container's port is untouched.
        seen = await asyncio.to_thread(interfaces.describe, "eth0", netns=ns)
        assert seen is not None and seen["mac"] == mac, "the container lost its interface"
        assert await leftovers(ovs, port.id) != [], "the container's port was unplugged"
        kept = await facade.get_port(port.id)  # NotFoundError if rebuild deleted it
        conf = {**conf, "daemonSocket": again.socket}
        containers = [(warmup, warm_ns)]
        if recorded:
            assert tagging.owner(standalone.TAG_CONTAINER, cid) in kept.tags, \
                "not given back to its container"
            assert not any(t.startswith("kuryr-pool") for t in kept.tags)
            containers.append((cid, ns))
        else:
            # Its owner is unknown: kept as it is (the network's teardown removes it here), and
            # never handed to another container.
            other, other_ns = container_id(), f"/run/netns/{make_netns()}"
            rc, out = await asyncio.to_thread(cni.invoke, executable, "ADD", conf,
                                              container_id=other, netns=other_ns)
            assert rc == 0 and out is not None, out
            assert out["interfaces"][0]["mac"] != mac, "a container's port was reused"
            assert "no record of whom it was handed to" in (tmp_path / "daemon.log").read_text()
            containers.append((other, other_ns))
        for container, netns in containers:
            rc, out = await asyncio.to_thread(cni.invoke, executable, "DEL", conf,
                                              container_id=container, netns=netns)
            assert rc == 0, out
            assert await cni.released(functools.partial(
                facade.list_ports, tags=[tagging.owner(standalone.TAG_CONTAINER, container)])
            ) == []
    if recorded:
        assert not await asyncio.to_thread(interfaces.link_exists, "eth0", netns=ns)
