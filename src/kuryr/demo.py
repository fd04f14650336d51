"""The main job's demonstration: three sandboxes (network namespaces) on one Neutron network.

``up`` makes (or finds) a tagged network with an IPv4 and an IPv6 subnet, attaches one port per
sandbox with the shared port lifecycle, and pings between the first two both ways with both
families; the third is the client of the demo's Service
(``kuryr.demo_services``, which puts a load balancer in front of the first two). ``down``
removes all of it. Everything made is tagged ``kuryr-demo=...`` so nothing else is ever
touched. Containers on the same network are ``kuryr.demo_runtimes``'s; ``down`` removes any
port they left on the demo network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Callable

from kuryr import binding, errors, settings
from kuryr.linux import namespaces
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

NETWORK_NAME = "kuryr-demo"
SANDBOXES = ("kuryr-demo-a", "kuryr-demo-b", "kuryr-demo-c")  # c: the Service's client
SUBNETS = (("10.199.0.0/24", 4), ("fd00:199::/64", 6))
NETWORK_TAG = tagging.owner("demo", "network")


@dataclasses.dataclass(frozen=True)
class Sandbox:
    netns: str
    port_id: str
    mac: str
    addresses: tuple[str, ...]
    status: str


@dataclasses.dataclass(frozen=True)
class Ping:
    source: str
    target: str
    ok: bool
    summary: str


def sandbox_tag(netns: str) -> str:
    return tagging.owner("demo", netns)


async def up(config: settings.KuryrSettings, *,
             say: Callable[[str], None]) -> tuple[str, list[Sandbox], list[Ping]]:
    """Build the demo (idempotent: an earlier demo is replaced); returns the network's ID too.
    Raises KuryrError."""
    neutron = client.Neutron.from_settings(config)
    binders = binding.binders(config.binding)
    try:
        net = await _ensure_network(neutron, say=say)
        sandboxes = []
        for name in SANDBOXES:  # side by side is no faster: the local cloud has one API worker
            await _detach_sandbox(neutron, binders, name)
            await asyncio.to_thread(namespaces.create, name)
            say(f"attaching a Neutron port to sandbox {name}")
            attachment = await lifecycle.attach(
                neutron, binders, network_id=net.id, netns=name, ifname="eth0",
                host=config.binding.host, tags=[sandbox_tag(name)], name=name,
                active_timeout=config.neutron.port_active_timeout)
            sandboxes.append(Sandbox(
                netns=name, port_id=attachment.port.id, mac=attachment.port.mac,
                addresses=tuple(str(f.address) for f in attachment.vif.fixed_ips),
                status=attachment.port.status))
        pings = await asyncio.gather(*(  # side by side: they load only the data path
            _ping(source.netns, address.split("/")[0])
            for source, target in ((sandboxes[0], sandboxes[1]), (sandboxes[1], sandboxes[0]))
            for address in target.addresses))
        # Neutron's status as it is now: ADD answered on ovn-controller's word, before it.
        sandboxes = [dataclasses.replace(s, status=(await neutron.get_port(s.port_id)).status)
                     for s in sandboxes]
        return net.id, sandboxes, pings
    finally:
        for b in binders.values():
            b.close()
        neutron.close()


async def down(config: settings.KuryrSettings, *, say: Callable[[str], None]) -> None:
    """Remove the sandboxes, their ports and the demo network. Idempotent."""
    neutron = client.Neutron.from_settings(config)
    binders = binding.binders(config.binding)
    try:
        for name in SANDBOXES:
            say(f"removing sandbox {name}")
            await _detach_sandbox(neutron, binders, name)
            await asyncio.to_thread(namespaces.remove, name)
        for net in await neutron.list_networks(tags=[NETWORK_TAG]):
            for port in await neutron.list_ports(network_id=net.id):
                if port.device_owner.startswith("compute:"):  # left by a container
                    say(f"removing port {port.id} left on the demo network")
                    await lifecycle.detach(neutron, binders, port_id=port.id)
            say(f"deleting network {net.name} ({net.id})")
            for subnet in await neutron.list_subnets(network_id=net.id):
                await neutron.delete_subnet(subnet.id)
            await neutron.delete_network(net.id)
    finally:
        for b in binders.values():
            b.close()
        neutron.close()


async def _ensure_network(neutron: client.Neutron, *,
                          say: Callable[[str], None]) -> resources.Network:
    found = await neutron.list_networks(tags=[NETWORK_TAG])
    if found:
        net = found[0]
    else:
        say(f"creating Neutron network {NETWORK_NAME}")
        net = await neutron.create_network(NETWORK_NAME, tags=[NETWORK_TAG])
    have = {s.cidr for s in await neutron.list_subnets(network_id=net.id)}
    for cidr, version in SUBNETS:
        if cidr not in have:
            say(f"creating subnet {cidr}")
            await neutron.create_subnet(net.id, cidr=cidr, ip_version=version,
                                        name=f"{NETWORK_NAME}-v{version}", tags=[NETWORK_TAG])
    return await neutron.get_network(net.id)


async def _detach_sandbox(neutron: client.Neutron, binders: dict[str, binding.Binder],
                          name: str) -> None:
    for port in await neutron.list_ports(tags=[sandbox_tag(name)]):
        await lifecycle.detach(neutron, binders, port_id=port.id, netns=name, ifname="eth0")


async def _ping(netns: str, address: str) -> Ping:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.2", "-W", "2", address,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate()
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    summary = next((line for line in lines if "packet loss" in line), lines[-1] if lines else "")
    return Ping(source=netns, target=address, ok=proc.returncode == 0, summary=summary)


def check_root() -> None:
    import os

    if os.geteuid() != 0:
        raise errors.PermanentError("the demo creates network namespaces: run it as root")
