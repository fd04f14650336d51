"""CNI results: a version-neutral form, its wire JSON for each supported spec version, and
reading a ``prevResult`` written in any of them.

Owns the differences between versions: ``ips[].version`` exists before 1.0.0 only, interface
``mtu`` from 1.1.0 only. podman and containerd reject a result newer than their library, so a
result is always written in the configuration's ``cniVersion``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from kuryr.cni import codes, protocol

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None


@dataclasses.dataclass(frozen=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclasses.dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclasses.dataclass(frozen=True)
class Dns:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: Dns = dataclasses.field(default_factory=Dns)

    def sandbox_interface(self, ifname: str) -> tuple[int, Interface] | None:
        """The interface named ``ifname`` that is inside a sandbox, with its index."""
        for index, interface in enumerate(self.interfaces):
            if interface.name == ifname and interface.sandbox:
                return index, interface
        return None


def to_wire(result: Result, cni_version: str) -> dict[str, Any]:
    """The result as JSON for ``cni_version``."""
    modern = protocol.version_tuple(cni_version) >= (1, 0, 0)
    with_mtu = protocol.version_tuple(cni_version) >= (1, 1, 0)
    interfaces = []
    for i in result.interfaces:
        wire: dict[str, Any] = {"name": i.name}
        if i.mac:
            wire["mac"] = i.mac
        if i.mtu and with_mtu:
            wire["mtu"] = i.mtu
        if i.sandbox:
            wire["sandbox"] = i.sandbox
        interfaces.append(wire)
    ips = []
    for ip in result.ips:
        entry: dict[str, Any] = {"address": str(ip.address)}
        if not modern:
            entry["version"] = str(ip.address.version)
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        if ip.interface is not None:
            entry["interface"] = ip.interface
        ips.append(entry)
    out: dict[str, Any] = {"cniVersion": cni_version, "interfaces": interfaces, "ips": ips}
    if result.routes:
        out["routes"] = [{"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw else {})}
                         for r in result.routes]
    dns: dict[str, Any] = {}
    if result.dns.nameservers:
        dns["nameservers"] = list(result.dns.nameservers)
    if result.dns.domain:
        dns["domain"] = result.dns.domain
    if result.dns.search:
        dns["search"] = list(result.dns.search)
    if result.dns.options:
        dns["options"] = list(result.dns.options)
    out["dns"] = dns
    return out


def from_wire(data: Mapping[str, Any]) -> Result:
    """Read a result (a ``prevResult``) of any supported version. Raises CniError 7."""
    try:
        interfaces = tuple(
            Interface(name=str(i["name"]), mac=str(i.get("mac", "")),
                      sandbox=str(i.get("sandbox", "")),
                      mtu=int(i["mtu"]) if i.get("mtu") else None)
            for i in data.get("interfaces") or [])
        ips = tuple(
            IPConfig(address=ipaddress.ip_interface(ip["address"]),
                     gateway=ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None,
                     interface=int(ip["interface"]) if ip.get("interface") is not None else None)
            for ip in data.get("ips") or [])
        routes = tuple(
            Route(dst=ipaddress.ip_network(r["dst"], strict=False),
                  gw=ipaddress.ip_address(r["gw"]) if r.get("gw") else None)
            for r in data.get("routes") or [])
        raw_dns = data.get("dns") or {}
        dns = Dns(nameservers=tuple(raw_dns.get("nameservers") or ()),
                  domain=str(raw_dns.get("domain") or ""),
                  search=tuple(raw_dns.get("search") or ()),
                  options=tuple(raw_dns.get("options") or ()))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise codes.CniError(codes.INVALID_CONFIG, f"prevResult is malformed: {e!r}") from e
    return Result(interfaces=interfaces, ips=ips, routes=routes, dns=dns)


def merge(previous: Result | None, ours: Result) -> Result:
    """``ours`` appended to the result of earlier plugins in a chain (interface indexes of ours
    shifted past theirs)."""
    if previous is None:
        return ours
    offset = len(previous.interfaces)
    shifted = tuple(dataclasses.replace(ip, interface=None if ip.interface is None
                                        else ip.interface + offset) for ip in ours.ips)
    nameservers = _union(previous.dns.nameservers, ours.dns.nameservers)
    search = _union(previous.dns.search, ours.dns.search)
    return Result(
        interfaces=previous.interfaces + ours.interfaces,
        ips=previous.ips + shifted,
        routes=previous.routes + tuple(r for r in ours.routes if r not in previous.routes),
        dns=Dns(nameservers=nameservers, domain=previous.dns.domain or ours.dns.domain,
                search=search, options=_union(previous.dns.options, ours.dns.options)),
    )


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(a) + tuple(x for x in b if x not in a)
