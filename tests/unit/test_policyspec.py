"""The NetworkPolicy translation (``kuryr.controller.policyspec``) on its own: the rules and
address groups a policy becomes, in Neutron's terms. What they do to traffic is checked in
the data plane by tests/k8s/test_netpol.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kuryr.controller import policyspec

CLUSTER = "kc"


def pod(namespace: str, name: str, ip: str, labels: dict[str, str] | None = None,
        ports: tuple[tuple[str, str, int], ...] = ()) -> policyspec.PodView:
    return policyspec.PodView(namespace, name, labels or {}, (ip,), ports)


VIEW = policyspec.View(
    pods=[pod("x", "a", "10.0.0.1", {"pod": "a"}, (("web", "TCP", 80),)),
          pod("x", "b", "10.0.0.2", {"pod": "b"}, (("web", "TCP", 8080),)),
          pod("y", "a", "10.0.1.1", {"pod": "a"}, (("web", "TCP", 80),))],
    namespaces={"x": {"ns": "x", "kubernetes.io/metadata.name": "x"},
                "y": {"ns": "y", "kubernetes.io/metadata.name": "y"}})


def policy(spec: dict[str, Any], namespace: str = "x") -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": namespace, "uid": "u1"}, "spec": spec}


def rules(spec: dict[str, Any], direction: str = "ingress") -> list[dict[str, Any]]:
    translated = policyspec.translate(policy(spec), VIEW, cluster_id=CLUSTER)
    return list(translated[f"{direction}SgRules"])


def test_policy_types_default_as_the_api_does() -> None:
    assert policyspec.policy_types(policy({"podSelector": {}})) == ["Ingress"]
    assert policyspec.policy_types(policy({"podSelector": {}, "egress": [{}]})) == [
        "Egress", "Ingress"]
    assert policyspec.policy_types(policy({"podSelector": {}, "egress": []})) == ["Ingress"]
    assert policyspec.policy_types(policy({"podSelector": {}, "policyTypes": ["Egress"]})) == [
        "Egress"]


def test_deny_all_is_no_rule_and_an_egress_only_policy_has_no_ingress_rule() -> None:
    assert rules({"podSelector": {}}) == []
    spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}],
            "ingress": [{}]}  # ingress rules of a policy without the Ingress type are ignored
    assert rules(spec, "ingress") == []
    assert {r["sgRule"]["ethertype"] for r in rules(spec, "egress")} == {"IPv4", "IPv6"}


def test_a_selector_peer_is_one_shared_address_group_and_ports_become_ranges() -> None:
    spec = {"podSelector": {}, "ingress": [{
        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
        "ports": [{"port": 80}, {"port": 8000, "endPort": 8010, "protocol": "UDP"},
                  {"protocol": "SCTP"}]}]}
    found = rules(spec)
    groups = {r["remoteAddressGroup"]["name"] for r in found}
    assert len(groups) == 1
    assert {(r["sgRule"].get("protocol"), r["sgRule"].get("port_range_min"),
             r["sgRule"].get("port_range_max")) for r in found} == {
        ("tcp", 80, 80), ("udp", 8000, 8010), ("sctp", None, None)}
    assert policyspec.addresses(found[0]["remoteAddressGroup"]["peer"], VIEW) == {"10.0.0.2/32"}
    # The same selector written differently is the same group.
    other = rules({"podSelector": {}, "ingress": [{"from": [{"podSelector": {
        "matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "b"]}]}}]}]})
    assert other[0]["remoteAddressGroup"]["name"] not in groups  # In is not matchLabels
    again = rules({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert again[0]["remoteAddressGroup"]["name"] in groups


def test_namespace_and_pod_selectors_and_or() -> None:
    both = rules({"podSelector": {}, "ingress": [{"from": [{
        "namespaceSelector": {"matchLabels": {"ns": "y"}},
        "podSelector": {"matchLabels": {"pod": "a"}}}]}]})
    assert policyspec.addresses(both[0]["remoteAddressGroup"]["peer"], VIEW) == {"10.0.1.1/32"}
    either = rules({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
        {"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert {a for r in either for a in policyspec.addresses(
        r["remoteAddressGroup"]["peer"], VIEW)} == {"10.0.1.1/32", "10.0.0.2/32"}
    everyone = rules({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert policyspec.addresses(everyone[0]["remoteAddressGroup"]["peer"], VIEW) == {
        "10.0.0.1/32", "10.0.0.2/32", "10.0.1.1/32"}


def test_ip_block_excepts_are_the_exact_difference() -> None:
    assert policyspec.difference("10.0.0.0/24", ["10.0.0.0/26", "10.0.0.192/26"]) == [
        "10.0.0.64/26", "10.0.0.128/26"]
    assert policyspec.difference("10.0.0.0/24", ["10.0.0.0/16"]) == []
    assert policyspec.difference("10.0.0.0/24", ["10.0.1.0/24"]) == ["10.0.0.0/24"]
    found = rules({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
        "cidr": "10.0.0.0/24", "except": ["10.0.0.2/32", "10.0.0.128/25"]}}]}]})
    (rule,) = found
    cidrs = [ipaddress.ip_network(c) for c in policyspec.addresses(
        rule["remoteAddressGroup"]["peer"], VIEW)]

    def held(ip: str) -> bool:
        return any(ipaddress.ip_address(ip) in c for c in cidrs)

    assert [held(f"10.0.0.{i}") for i in (0, 1, 2, 3, 127, 128, 255)] == [
        True, True, False, True, True, False, False]
    plain = rules({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.2.3/8"}}]}]})
    assert [r["sgRule"]["remote_ip_prefix"] for r in plain] == ["10.0.0.0/8"]


def test_named_ports_resolve_on_the_receiver() -> None:
    spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"port": "web"}]}],
            "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "web"}]}]}
    translated = policyspec.translate(policy(spec), VIEW, cluster_id=CLUSTER)
    # Ingress: resolved on each selected pod; pods that differ get different variants.
    a, b = VIEW.pods[0], VIEW.pods[1]
    variant_a, rules_a = policyspec.variant_rules(translated, a)
    variant_b, _ = policyspec.variant_rules(translated, b)
    assert variant_a != variant_b
    ingress_ports = {r["sgRule"].get("port_range_min") for r in rules_a
                     if r["sgRule"]["direction"] == "ingress"}
    assert ingress_ports == {80}
    assert policyspec.variant_rules(translated, None)[1] == [
        r for r in rules_a if r["sgRule"]["direction"] == "egress"]
    # Egress: one address group per number the peers resolve it to.
    egress = translated["egressSgRules"]
    by_port = {r["sgRule"]["port_range_min"]: policyspec.addresses(
        r["remoteAddressGroup"]["peer"], VIEW) for r in egress}
    assert by_port == {80: {"10.0.0.1/32"}, 8080: {"10.0.0.2/32"}}
    # A name that resolves nowhere opens nothing.
    nowhere = {"podSelector": {}, "egress": [{"ports": [{"port": "nope"}]}]}
    assert policyspec.translate(policy(nowhere), VIEW, cluster_id=CLUSTER)["egressSgRules"] == []


def test_egress_to_a_service_vip_when_every_endpoint_is_allowed() -> None:
    balancer = {"ip": "172.30.0.10", "ports": [{"name": "h", "port": 8000, "protocol": "TCP",
                                                  "targetPort": "80"}],
                "endpointSlices": [{"endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                    {"addresses": ["10.0.1.1"], "conditions": {"ready": True}}],
                    "ports": [{"name": "h", "port": 80, "protocol": "TCP"}]}]}
    view = policyspec.View(VIEW.pods, VIEW.namespaces, [balancer])

    def vip_rules(peer: dict[str, Any]) -> list[tuple[Any, ...]]:
        spec = {"podSelector": {}, "egress": [{"to": [peer], "ports": [{"port": 80}]}]}
        found = policyspec.translate(policy(spec), view, cluster_id=CLUSTER)["egressSgRules"]
        return [(r["sgRule"]["remote_ip_prefix"], r["sgRule"]["port_range_min"])
                for r in found if r["sgRule"].get("remote_ip_prefix")]

    assert vip_rules({"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}) \
        == [("172.30.0.10/32", 8000)]
    assert vip_rules({"podSelector": {"matchLabels": {"pod": "a"}}}) == [], \
        "y/a is an endpoint the rule does not allow"


@pytest.mark.parametrize("operator", ["Gt", "in"])
def test_an_unknown_selector_operator_is_refused(operator: str) -> None:
    from kuryr import errors
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchExpressions": [
        {"key": "a", "operator": operator, "values": ["1"]}]}}]}]}
    translated = policyspec.translate(policy(spec), VIEW, cluster_id=CLUSTER)
    with pytest.raises(errors.PermanentError, match=operator):
        policyspec.addresses(translated["ingressSgRules"][0]["remoteAddressGroup"]["peer"],
                             VIEW)
