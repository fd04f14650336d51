"""Octavia resources as kuryr sees them: frozen dataclasses translated from openstacksdk's
load-balancer resources at this edge, and ``MemberSpec``, what a batch member update sends.
Octavia's wire names stay here (``loadbalancer_id``, ``vip_port_id``); nothing is fetched."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class LoadBalancer:
    id: str
    name: str
    vip_address: str
    vip_port_id: str
    vip_subnet_id: str
    project_id: str
    provider: str
    provisioning_status: str
    operating_status: str
    tags: tuple[str, ...] = ()

    @property
    def is_pending(self) -> bool:
        """PENDING_CREATE, PENDING_UPDATE or PENDING_DELETE: Octavia refuses changes (409)."""
        return self.provisioning_status.startswith("PENDING_")


@dataclasses.dataclass(frozen=True)
class Listener:
    id: str
    name: str
    protocol: str
    protocol_port: int
    loadbalancer_id: str
    default_pool_id: str | None
    provisioning_status: str
    timeout_client_data: int | None = None
    timeout_member_data: int | None = None
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Pool:
    id: str
    name: str
    protocol: str
    lb_algorithm: str
    listener_id: str | None
    loadbalancer_id: str | None
    provisioning_status: str
    session_persistence: dict[str, Any] | None = None
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Member:
    id: str
    name: str
    address: str
    protocol_port: int
    subnet_id: str | None
    provisioning_status: str
    operating_status: str
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """One member as ``Octavia.set_members`` sends it; Octavia matches existing members by
    (address, protocol_port)."""

    address: str
    protocol_port: int
    subnet_id: str | None = None
    name: str = ""
    tags: tuple[str, ...] = ()

    def body(self, base_tags: tuple[str, ...]) -> dict[str, Any]:
        """The member's JSON in a batch update, tagged with ``base_tags`` first."""
        wire: dict[str, Any] = {"address": self.address, "protocol_port": self.protocol_port,
                                "tags": [*base_tags, *(t for t in self.tags
                                                       if t not in base_tags)]}
        if self.subnet_id:
            wire["subnet_id"] = self.subnet_id
        if self.name:
            wire["name"] = self.name
        return wire


def _tags(r: Any) -> tuple[str, ...]:
    return tuple(r.tags or ())


def _first_id(refs: Any) -> str | None:
    """The id of the first of a list of ``{"id": ...}`` references (pools and listeners name
    their parents so)."""
    for ref in refs or ():
        if isinstance(ref, dict) and ref.get("id"):
            return str(ref["id"])
    return None


def load_balancer(r: Any) -> LoadBalancer:
    return LoadBalancer(
        id=r.id, name=r.name or "", vip_address=r.vip_address or "",
        vip_port_id=r.vip_port_id or "", vip_subnet_id=r.vip_subnet_id or "",
        project_id=r.project_id or "", provider=r.provider or "",
        provisioning_status=r.provisioning_status or "",
        operating_status=r.operating_status or "", tags=_tags(r))


def listener(r: Any) -> Listener:
    return Listener(
        id=r.id, name=r.name or "", protocol=r.protocol or "",
        protocol_port=int(r.protocol_port or 0),
        loadbalancer_id=r.load_balancer_id or _first_id(r.load_balancers) or "",
        default_pool_id=r.default_pool_id or None,
        provisioning_status=r.provisioning_status or "",
        timeout_client_data=r.timeout_client_data, timeout_member_data=r.timeout_member_data,
        tags=_tags(r))


def pool(r: Any) -> Pool:
    return Pool(
        id=r.id, name=r.name or "", protocol=r.protocol or "", lb_algorithm=r.lb_algorithm or "",
        listener_id=r.listener_id or _first_id(r.listeners),
        loadbalancer_id=r.loadbalancer_id or _first_id(r.loadbalancers),
        provisioning_status=r.provisioning_status or "",
        session_persistence=dict(r.session_persistence) if r.session_persistence else None,
        tags=_tags(r))


def member(r: Any) -> Member:
    return Member(
        id=r.id, name=r.name or "", address=r.address or "",
        protocol_port=int(r.protocol_port or 0), subnet_id=r.subnet_id or None,
        provisioning_status=r.provisioning_status or "",
        operating_status=r.operating_status or "", tags=_tags(r))
