"""The VIF vocabulary (after os-vif): what a container interface is, as plain frozen data.

Owns the description of a Neutron port as the binders need it (MAC, MTU, fixed IPs with their
prefix lengths, gateways, routes, DNS, binding type) and its versioned serialised form. It does
no I/O and knows nothing of Neutron's wire names; ``kuryr.neutron`` translates those.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Route:
    """A route inside the container: ``destination`` via ``gateway``."""

    destination: IPNetwork
    gateway: IPAddress


@dataclasses.dataclass(frozen=True)
class Subnet:
    """A Neutron subnet as the container sees it."""

    subnet_id: str
    cidr: IPNetwork
    gateway: IPAddress | None = None
    routes: tuple[Route, ...] = ()
    dns_nameservers: tuple[str, ...] = ()

    @property
    def ip_version(self) -> int:
        return self.cidr.version


@dataclasses.dataclass(frozen=True)
class FixedIP:
    """One address of the port, with the prefix length of its subnet."""

    address: IPInterface
    subnet_id: str


@dataclasses.dataclass(frozen=True)
class VIF:
    """A virtual interface: one Neutron port, ready to be plugged.

    ``binding_type`` names the binder (``ovs``); ``is_active`` says whether Neutron reported the
    port ACTIVE when this was built.
    """

    port_id: str
    mac: str
    network_id: str
    mtu: int
    fixed_ips: tuple[FixedIP, ...]
    subnets: tuple[Subnet, ...]
    binding_type: str = "ovs"
    is_active: bool = False

    def subnet(self, subnet_id: str) -> Subnet | None:
        return next((s for s in self.subnets if s.subnet_id == subnet_id), None)

    def gateways(self) -> list[IPAddress]:
        """The gateway of every subnet the port has an address on, one per IP version."""
        seen: dict[int, IPAddress] = {}
        for fixed_ip in self.fixed_ips:
            subnet = self.subnet(fixed_ip.subnet_id)
            if subnet and subnet.gateway and subnet.ip_version not in seen:
                seen[subnet.ip_version] = subnet.gateway
        return list(seen.values())

    def routes(self) -> list[Route]:
        """Host routes of every subnet the port has an address on."""
        found: list[Route] = []
        for fixed_ip in self.fixed_ips:
            subnet = self.subnet(fixed_ip.subnet_id)
            if subnet:
                found.extend(r for r in subnet.routes if r not in found)
        return found

    def dns_nameservers(self) -> list[str]:
        found: list[str] = []
        for subnet in self.subnets:
            found.extend(d for d in subnet.dns_nameservers if d not in found)
        return found

    def to_dict(self) -> dict[str, Any]:
        """The serialised form, with an explicit schema version."""
        return {
            "schema": SCHEMA_VERSION,
            "port_id": self.port_id,
            "mac": self.mac,
            "network_id": self.network_id,
            "mtu": self.mtu,
            "binding_type": self.binding_type,
            "is_active": self.is_active,
            "fixed_ips": [{"address": str(f.address), "subnet_id": f.subnet_id}
                          for f in self.fixed_ips],
            "subnets": [
                {
                    "subnet_id": s.subnet_id,
                    "cidr": str(s.cidr),
                    "gateway": str(s.gateway) if s.gateway else None,
                    "routes": [{"destination": str(r.destination), "gateway": str(r.gateway)}
                               for r in s.routes],
                    "dns_nameservers": list(s.dns_nameservers),
                }
                for s in self.subnets
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VIF:
        """Parse the serialised form. Raises ValueError on an unknown schema or bad field."""
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported VIF schema {schema!r} (this kuryr reads {SCHEMA_VERSION})")
        try:
            return cls(
                port_id=str(data["port_id"]),
                mac=str(data["mac"]),
                network_id=str(data["network_id"]),
                mtu=int(data["mtu"]),
                binding_type=str(data.get("binding_type", "ovs")),
                is_active=bool(data.get("is_active", False)),
                fixed_ips=tuple(
                    FixedIP(address=ipaddress.ip_interface(f["address"]),
                            subnet_id=str(f["subnet_id"]))
                    for f in data["fixed_ips"]
                ),
                subnets=tuple(
                    Subnet(
                        subnet_id=str(s["subnet_id"]),
                        cidr=ipaddress.ip_network(s["cidr"]),
                        gateway=ipaddress.ip_address(s["gateway"]) if s.get("gateway") else None,
                        routes=tuple(Route(destination=ipaddress.ip_network(r["destination"]),
                                           gateway=ipaddress.ip_address(r["gateway"]))
                                     for r in s.get("routes", [])),
                        dns_nameservers=tuple(s.get("dns_nameservers", [])),
                    )
                    for s in data["subnets"]
                ),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed VIF: missing or bad field {e}") from e
