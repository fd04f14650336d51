"""Which members a Service port's pool gets, from the merged EndpointSlices of its spec."""

from __future__ import annotations

from typing import Any

from kuryr.controller import members


def _slice(port: int, *endpoints: tuple[str, dict[str, bool]], name: str = "http",
           protocol: str = "TCP") -> dict[str, Any]:
    return {"ports": [{"name": name, "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [a], "conditions": c} for a, c in endpoints]}


READY = {"ready": True, "serving": True, "terminating": False}
NOT_READY = {"ready": False, "serving": False, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


def _members(spec: dict[str, Any], port: members.ServicePort) -> set[tuple[str, int]]:
    return {(m.address, m.protocol_port)
            for m in members.desired_members(spec, port, subnet_of=lambda _: None)}


def test_named_target_ports_resolve_per_slice_and_only_ready_endpoints_count() -> None:
    spec = {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}],
            "endpointSlices": [_slice(8081, ("10.0.0.1", READY), ("10.0.0.2", NOT_READY)),
                               _slice(8082, ("10.0.0.3", READY))]}
    [port] = members.service_ports(spec)
    assert _members(spec, port) == {("10.0.0.1", 8081), ("10.0.0.3", 8082)}


def test_serving_terminating_endpoints_are_used_only_when_none_is_ready() -> None:
    spec = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpointSlices": [_slice(8080, ("10.0.0.1", TERMINATING))]}
    [port] = members.service_ports(spec)
    assert _members(spec, port) == {("10.0.0.1", 8080)}
    spec["endpointSlices"].append(_slice(8080, ("10.0.0.2", READY)))
    assert _members(spec, port) == {("10.0.0.2", 8080)}


def test_tcp_and_udp_on_one_port_are_two_listeners_matched_by_name_and_protocol() -> None:
    spec = {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
            "endpointSlices": [{"ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                                          {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}],
                                "endpoints": [{"addresses": ["10.0.0.1"],
                                               "conditions": READY}]}]}
    udp, tcp = sorted(members.service_ports(spec), key=lambda p: p.protocol, reverse=True)
    assert (udp.protocol, tcp.protocol) == ("UDP", "TCP")
    assert _members(spec, udp) == {("10.0.0.1", 5353)}
    assert _members(spec, tcp) == {("10.0.0.1", 5354)}
