"""Neutron resources as kuryr sees them: frozen dataclasses translated from openstacksdk's
resources at this edge, and the VIF (``kuryr.model``) built from a port, its network and subnets.
Also what callers hand in that is more than one value: ``RuleSpec``, a rule to create; and
``canonical_cidr``, the form in which Neutron stores an address group's CIDRs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from kuryr import errors, model


@dataclasses.dataclass(frozen=True)
class Network:
    id: str
    name: str
    mtu: int
    project_id: str
    tags: tuple[str, ...] = ()
    subnet_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Subnet:
    id: str
    name: str
    network_id: str
    cidr: str
    ip_version: int
    gateway_ip: str | None
    host_routes: tuple[tuple[str, str], ...] = ()
    dns_nameservers: tuple[str, ...] = ()
    subnet_pool_id: str | None = None
    tags: tuple[str, ...] = ()
    project_id: str = ""


@dataclasses.dataclass(frozen=True)
class SubnetPool:
    id: str
    name: str
    prefixes: tuple[str, ...]
    default_prefix_length: int | None
    ip_version: int
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Router:
    id: str
    name: str
    tags: tuple[str, ...] = ()
    external_network_id: str | None = None  # the network of its gateway, if it has one


@dataclasses.dataclass(frozen=True)
class FixedIP:
    subnet_id: str
    ip_address: str


@dataclasses.dataclass(frozen=True)
class Port:
    id: str
    name: str
    network_id: str
    mac: str
    status: str
    fixed_ips: tuple[FixedIP, ...]
    device_owner: str = ""
    device_id: str = ""
    host_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    project_id: str = ""
    created_at: str = ""  # ISO 8601 as Neutron gives it ("2026-12-01T14:58:08Z"), or ""
    vif_type: str = ""  # binding:vif_type ("ovs", "binding_failed", "unbound"), or ""

    @property
    def is_active(self) -> bool:
        return self.status == "ACTIVE"


@dataclasses.dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str
    rule_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    project_id: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class SecurityGroupRule:
    id: str
    security_group_id: str
    direction: str
    ethertype: str
    protocol: str | None
    port_range_min: int | None
    port_range_max: int | None
    remote_ip_prefix: str | None
    remote_group_id: str | None = None
    description: str = ""
    remote_address_group_id: str | None = None
    project_id: str = ""


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """A security group rule to create (``create_security_group_rules``): at most one remote
    (``remote_ip_prefix``, ``remote_group_id`` or ``remote_address_group_id``; none is
    anywhere). The description is not compared, as Neutron ignores it when it looks for a
    duplicate. Values are sent as given, but for ``remote_ip_prefix``, sent canonical
    (``canonical_cidr``). What Neutron changes on its side: a port range 1-65535 is stored
    unset, 0.0.0.0/0 and ::/0 count as "anywhere" (a duplicate of no prefix), a protocol name
    is lower-cased, a protocol number kept as given.
    """

    direction: str = "ingress"
    ethertype: str = "IPv4"
    protocol: str | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    remote_address_group_id: str | None = None
    description: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class AddressGroup:
    """An address group: a set of CIDRs a rule can name as its remote
    (``remote_address_group_id``). ``addresses`` are canonical (``canonical_cidr``)."""

    id: str
    name: str
    addresses: frozenset[str] = frozenset()
    project_id: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Quota:
    """A project's limits (-1: unlimited), by the SDK's names; ``update_quota`` takes the same
    names."""

    project_id: str
    networks: int | None = None
    subnets: int | None = None
    subnet_pools: int | None = None
    ports: int | None = None
    routers: int | None = None
    router_routes: int | None = None
    floating_ips: int | None = None
    rbac_policies: int | None = None
    security_groups: int | None = None
    security_group_rules: int | None = None


QUOTA_LIMITS = tuple(f.name for f in dataclasses.fields(Quota) if f.name != "project_id")


@dataclasses.dataclass(frozen=True)
class FloatingIp:
    id: str
    floating_ip_address: str
    floating_network_id: str
    port_id: str | None
    fixed_ip_address: str | None
    project_id: str
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Trunk:
    id: str
    name: str
    port_id: str
    status: str
    sub_ports: tuple[Mapping[str, Any], ...] = ()
    tags: tuple[str, ...] = ()


def _tags(r: Any) -> tuple[str, ...]:
    return tuple(r.tags or ())


def network(r: Any) -> Network:
    return Network(id=r.id, name=r.name or "", mtu=int(r.mtu or 1500),
                   project_id=r.project_id or "", tags=_tags(r),
                   subnet_ids=tuple(r.subnet_ids or ()))


def subnet(r: Any) -> Subnet:
    return Subnet(
        id=r.id, name=r.name or "", network_id=r.network_id, cidr=r.cidr,
        ip_version=int(r.ip_version), gateway_ip=r.gateway_ip,
        host_routes=tuple((h["destination"], h["nexthop"]) for h in r.host_routes or ()),
        dns_nameservers=tuple(r.dns_nameservers or ()), subnet_pool_id=r.subnet_pool_id,
        tags=_tags(r), project_id=r.project_id or "")


def subnet_pool(r: Any) -> SubnetPool:
    return SubnetPool(id=r.id, name=r.name or "", prefixes=tuple(r.prefixes or ()),
                      default_prefix_length=r.default_prefix_length,
                      ip_version=int(r.ip_version or 4), tags=_tags(r))


def router(r: Any) -> Router:
    gateway = r.external_gateway_info or {}
    return Router(id=r.id, name=r.name or "", tags=_tags(r),
                  external_network_id=gateway.get("network_id") or None)


def port(r: Any) -> Port:
    return Port(
        id=r.id, name=r.name or "", network_id=r.network_id, mac=r.mac_address,
        status=r.status or "", device_owner=r.device_owner or "", device_id=r.device_id or "",
        host_id=r.binding_host_id or "", project_id=r.project_id or "",
        fixed_ips=tuple(FixedIP(subnet_id=f["subnet_id"], ip_address=f["ip_address"])
                        for f in r.fixed_ips or ()),
        security_group_ids=tuple(r.security_group_ids or ()), tags=_tags(r),
        created_at=r.created_at or "", vif_type=r.binding_vif_type or "")


def security_group(r: Any) -> SecurityGroup:
    return SecurityGroup(id=r.id, name=r.name or "",
                         rule_ids=tuple(rule["id"] for rule in r.security_group_rules or ()),
                         tags=_tags(r), project_id=r.project_id or "",
                         description=r.description or "")


def security_group_rule(r: Any) -> SecurityGroupRule:
    return SecurityGroupRule(
        id=r.id, security_group_id=r.security_group_id, direction=r.direction,
        ethertype=r.ether_type, protocol=r.protocol, port_range_min=r.port_range_min,
        port_range_max=r.port_range_max, remote_ip_prefix=r.remote_ip_prefix,
        remote_group_id=r.remote_group_id or None, description=r.description or "",
        remote_address_group_id=r.remote_address_group_id or None,
        project_id=r.project_id or "")


def canonical_cidr(address: str) -> str:
    """The form in which Neutron stores an address group's CIDR (netaddr's
    ``f"{network}/{prefixlen}"``): host bits cleared, a bare address as /32 or /128, IPv6
    lower-case and compressed as inet_ntop writes it (``::ffff:10.0.0.1/128`` keeps its dotted
    tail, where Python's ``ipaddress`` would write ``::ffff:a00:1``). Raises PermanentError
    for what is not an address or CIDR."""
    try:
        net = ipaddress.ip_network(address, strict=False)
    except (ValueError, TypeError) as e:
        raise errors.PermanentError(f"{address!r} is not an IP address or CIDR") from e
    if net.version == 6:
        text = socket.inet_ntop(socket.AF_INET6, net.network_address.packed)
    else:
        text = str(net.network_address)
    return f"{text}/{net.prefixlen}"


def address_group(r: Any) -> AddressGroup:
    return AddressGroup(id=r.id, name=r.name or "",
                        addresses=frozenset(canonical_cidr(a) for a in r.addresses or ()),
                        project_id=r.project_id or "", description=r.description or "")


def quota(r: Any, project_id: str) -> Quota:
    limits = {name: getattr(r, name, None) for name in QUOTA_LIMITS}
    return Quota(project_id=project_id,
                 **{k: int(v) for k, v in limits.items() if v is not None})


def floating_ip(r: Any) -> FloatingIp:
    return FloatingIp(
        id=r.id, floating_ip_address=r.floating_ip_address,
        floating_network_id=r.floating_network_id, port_id=r.port_id or None,
        fixed_ip_address=r.fixed_ip_address or None, project_id=r.project_id or "",
        description=r.description or "", tags=_tags(r))


def trunk(r: Any) -> Trunk:
    return Trunk(id=r.id, name=r.name or "", port_id=r.port_id, status=r.status or "",
                 sub_ports=tuple(r.sub_ports or ()), tags=_tags(r))


def vif(p: Port, net: Network, subnets: Iterable[Subnet]) -> model.VIF:
    """The VIF for a port: addresses with their subnets' prefix lengths, gateways, routes."""
    by_id = {s.id: s for s in subnets}
    fixed_ips = []
    for f in p.fixed_ips:
        s = by_id[f.subnet_id]
        prefix = ipaddress.ip_network(s.cidr).prefixlen
        fixed_ips.append(model.FixedIP(address=ipaddress.ip_interface(f"{f.ip_address}/{prefix}"),
                                       subnet_id=s.id))
    return model.VIF(
        port_id=p.id, mac=p.mac, network_id=p.network_id, mtu=net.mtu,
        fixed_ips=tuple(fixed_ips), is_active=p.is_active,
        subnets=tuple(
            model.Subnet(
                subnet_id=s.id, cidr=ipaddress.ip_network(s.cidr),
                gateway=ipaddress.ip_address(s.gateway_ip) if s.gateway_ip else None,
                routes=tuple(model.Route(destination=ipaddress.ip_network(d),
                                         gateway=ipaddress.ip_address(g))
                             for d, g in s.host_routes),
                dns_nameservers=s.dns_nameservers)
            for s in by_id.values() if any(f.subnet_id == s.id for f in p.fixed_ips)),
    )
