"""Which members each listener's pool of a KuryrLoadBalancer should have: pure functions of
its spec, no I/O.

A Service port (name, protocol) takes, from every merged EndpointSlice, the slice port of the
same name and protocol: its ``port`` is the target port *resolved for the endpoints of that
slice* (a named targetPort can differ from pod to pod; Kubernetes then puts those pods in
different slices). Members are the ready endpoints' addresses with that port; when no
endpoint of the Service port is ready, the serving and terminating ones (Kubernetes' rule for
graceful termination). Each member's subnet comes from ``subnet_of`` (None: the VIP's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kuryr.octavia import resources as octavia_resources


@dataclasses.dataclass(frozen=True, order=True)
class ServicePort:
    """One listener of a load balancer: a Service port."""

    protocol: str
    port: int
    name: str = ""

    @property
    def label(self) -> str:
        return f"{self.protocol}:{self.port}"


def service_ports(spec: Mapping[str, Any]) -> list[ServicePort]:
    """The listeners a spec asks for, one per (protocol, port), in a stable order."""
    found = {(str(p.get("protocol") or "TCP").upper(), int(p["port"])): str(p.get("name") or "")
             for p in spec.get("ports") or []}
    return sorted(ServicePort(protocol, port, name) for (protocol, port), name in found.items())


def desired_members(spec: Mapping[str, Any], port: ServicePort, *,
                    subnet_of: Callable[[str], str | None]) -> list[octavia_resources.MemberSpec]:
    """The members of the pool behind ``port``, sorted, without duplicates."""
    ready: set[tuple[str, int]] = set()
    fallback: set[tuple[str, int]] = set()
    for piece in spec.get("endpointSlices") or []:
        target = _slice_port(piece.get("ports") or [], port)
        if target is None:
            continue
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            pairs = {(str(a), target) for a in endpoint.get("addresses") or []}
            if conditions.get("ready", True) and not conditions.get("terminating"):
                ready |= pairs
            elif conditions.get("serving") and conditions.get("terminating"):
                fallback |= pairs
    chosen = ready or fallback
    return [octavia_resources.MemberSpec(address=address, protocol_port=number,
                                         subnet_id=subnet_of(address),
                                         name=f"{address}:{number}")
            for address, number in sorted(chosen)]


def _slice_port(ports: Iterable[Mapping[str, Any]], port: ServicePort) -> int | None:
    for candidate in ports:
        if (str(candidate.get("name") or "") == port.name
                and str(candidate.get("protocol") or "TCP").upper() == port.protocol
                and candidate.get("port") is not None):
            return int(candidate["port"])
    return None


def same_members(current: Iterable[octavia_resources.Member],
                 wanted: Iterable[octavia_resources.MemberSpec]) -> bool:
    """Whether a pool already has exactly the wanted members (address, port, subnet; Octavia
    reports no subnet for a member sent without one)."""
    return ({(m.address, m.protocol_port, m.subnet_id) for m in current}
            == {(m.address, m.protocol_port, m.subnet_id) for m in wanted})
