"""A container interface as both daemon modes see it: the CNI result of a plugged VIF, what
CHECK finds different inside the sandbox, and whether Open vSwitch can plug at all.

Owns what the modes share about a plugged interface; not where its VIF comes from (Neutron in
``standalone``, the KuryrPort in ``kubernetes``) nor the requests' serialisation.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping

from kuryr import binding, errors, model
from kuryr.binding import ovs as ovs_binding
from kuryr.cni import codes, protocol, results
from kuryr.linux import interfaces, namespaces


def result_for(vif: model.VIF, *, ifname: str, sandbox: str) -> results.Result:
    """The CNI result of a plugged VIF: one sandbox interface, its addresses with gateways,
    default and host routes, and the subnets' DNS servers."""
    ips = []
    for fixed_ip in vif.fixed_ips:
        subnet = vif.subnet(fixed_ip.subnet_id)
        ips.append(results.IPConfig(address=fixed_ip.address,
                                    gateway=subnet.gateway if subnet else None, interface=0))
    routes = [results.Route(dst=ipaddress.ip_network("::/0" if g.version == 6 else "0.0.0.0/0"),
                            gw=g) for g in vif.gateways()]
    routes += [results.Route(dst=r.destination, gw=r.gateway) for r in vif.routes()]
    return results.Result(
        interfaces=(results.Interface(name=ifname, mac=vif.mac, sandbox=sandbox, mtu=vif.mtu),),
        ips=tuple(ips), routes=tuple(routes),
        dns=results.Dns(nameservers=tuple(vif.dns_nameservers())))


def previous_result(request: protocol.Request) -> tuple[results.Result, int, results.Interface]:
    """CHECK's ``prevResult`` with the index and entry of the request's sandbox interface.
    Raises CniError 7 (no prevResult, or no such interface in it)."""
    if request.config.prev_result is None:
        raise codes.CniError(codes.INVALID_CONFIG, "CHECK needs a prevResult")
    previous = results.from_wire(request.config.prev_result)
    found = previous.sandbox_interface(request.ifname)
    if found is None:
        raise codes.CniError(codes.INVALID_CONFIG,
                             f"prevResult has no interface {request.ifname} in a sandbox")
    return previous, found[0], found[1]


async def namespace_differences(request: protocol.Request, previous: results.Result,
                                index: int, expected: results.Interface) -> list[str]:
    """How the request's namespace differs from ``previous``: the interface, its MAC, its
    addresses and routes. Raises NamespaceNotFoundError."""
    path = namespaces.resolve(request.netns)
    diffs: list[str] = []
    seen = await asyncio.to_thread(interfaces.describe, request.ifname, netns=path)
    if seen is None:
        return [f"interface {request.ifname} is missing from {request.netns}"]
    if expected.mac and str(seen["mac"]).lower() != expected.mac.lower():
        diffs.append(f"{request.ifname} has MAC {seen['mac']}, not {expected.mac}")
    for ip in previous.ips:
        if ip.interface in (None, index) and str(ip.address) not in seen["addresses"]:
            diffs.append(f"address {ip.address} is missing from {request.ifname}")
    for route in previous.routes:
        if route.gw is not None and f"{route.dst} via {route.gw}" not in seen["routes"]:
            diffs.append(f"route {route.dst} via {route.gw} is missing")
    return diffs


def mismatch(request: protocol.Request, diffs: list[str]) -> codes.CniError:
    """CHECK's answer for differences found."""
    return codes.CniError(codes.CHECK_MISMATCH,
                          f"CHECK found {len(diffs)} difference(s) for container "
                          f"{request.container_id}: {diffs[0]}", "; ".join(diffs))


async def check_ovs(binders: Mapping[str, binding.Binder]) -> None:
    """Raises CniError 50 (the OVS bridge is missing: ADD cannot plug) or 51 (OVS does not
    answer: running containers may lose connectivity)."""
    binder = binders.get("ovs")
    if not isinstance(binder, ovs_binding.OvsBinder):
        return
    bridge = binder.config.ovs_bridge
    try:
        exists = await asyncio.to_thread(binder.ovsdb.bridge_exists, bridge)
    except errors.KuryrError as e:
        raise codes.CniError(codes.LIMITED_CONNECTIVITY, f"cannot reach Open vSwitch: {e}",
                             "running containers may have limited connectivity") from e
    if not exists:
        raise codes.CniError(codes.NOT_AVAILABLE, f"OVS bridge {bridge} does not exist")
