"""The NetworkPolicy reference evaluator against cases worked out by hand from the API
reference, on the upstream e2e layout (namespaces x, y, z; pods a, b, c; TCP and UDP on 80
and 81 through named ports). Each expectation lists what is DENIED; everything else (and a
pod's traffic to itself) is allowed."""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.netpol import layout, matrix, model

ALL = layout.Layout().keys()
CASES = [(80, "TCP"), (80, "UDP"), (81, "TCP"), (81, "UDP")]
# x is labelled team=red, y team=blue, z has no label but the implicit name.
NAMESPACES = [layout.namespace_spec("x", labels={"team": "red"}),
              layout.namespace_spec("y", labels={"team": "blue"}),
              layout.namespace_spec("z")]
SUBNET = {"x": "10.0.1", "y": "10.0.2", "z": "10.0.3"}


def _ip(key: str) -> str:
    namespace, name = key.split("/")
    return f"{SUBNET[namespace]}.{10 + 'abc'.index(name)}"


PODS = layout.Layout().pod_specs({k: _ip(k) for k in ALL})


def _policy(namespace: str, name: str = "p", **spec: Any) -> dict[str, Any]:
    spec.setdefault("podSelector", {})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": namespace, "name": name}, "spec": spec}


def _pod(name: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"pod": name}}}


def _ns(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {model.NAME_LABEL: name}}}


def _cluster(*policies: dict[str, Any], pods: Iterable[dict[str, Any]] = PODS,
             **options: Any) -> model.Cluster:
    return model.Cluster(NAMESPACES, pods, policies, **options)


def _denied(cluster: model.Cluster, port: int, protocol: str,
            keys: list[str] = ALL) -> set[str]:
    return {f"{s}>{d}" for s in keys for d in keys
            if not cluster.allowed(s, d, port, protocol)}


def _into(dst: str, *, allowed_from: Iterable[str] = ()) -> set[str]:
    """Every other pod to ``dst`` denied, but ``allowed_from``."""
    keep = set(allowed_from) | {dst}
    return {f"{s}>{dst}" for s in ALL if s not in keep}


def _out_of(src: str, *, allowed_to: Iterable[str] = ()) -> set[str]:
    keep = set(allowed_to) | {src}
    return {f"{src}>{d}" for d in ALL if d not in keep}


def _by_case(cluster: model.Cluster) -> dict[tuple[int, str], set[str]]:
    return {case: _denied(cluster, *case) for case in CASES}


def test_no_policy_allows_everything() -> None:
    for cluster in (_cluster(), _cluster(self_traffic_allowed=False)):
        assert _by_case(cluster) == {case: set() for case in CASES}
        assert not cluster.is_isolated("x/a", model.INGRESS)
        assert not cluster.is_isolated("x/a", model.EGRESS)


def test_deny_all_ingress_isolates_every_pod_of_its_namespace_for_ingress_only() -> None:
    expected = _into("x/a") | _into("x/b") | _into("x/c")
    explicit = _cluster(_policy("x", policyTypes=["Ingress"]))
    defaulted = _cluster(_policy("x"))  # no policyTypes, no ingress: Ingress, nothing in
    empty_list = _cluster(_policy("x", ingress=[]))
    for cluster in (explicit, defaulted, empty_list):
        assert _by_case(cluster) == {case: expected for case in CASES}
        assert cluster.allowed("x/a", "y/b", 80, "TCP")  # egress untouched
    # A pod's traffic to itself is allowed unless asked otherwise.
    strict = _cluster(_policy("x"), self_traffic_allowed=False)
    assert not strict.allowed("x/a", "x/a", 80, "TCP")
    assert _denied(strict, 80, "TCP") == expected | {"x/a>x/a", "x/b>x/b", "x/c>x/c"}


def test_deny_all_egress_needs_the_egress_type() -> None:
    cluster = _cluster(_policy("y", policyTypes=["Egress"]))
    expected = _out_of("y/a") | _out_of("y/b") | _out_of("y/c")
    assert _by_case(cluster) == {case: expected for case in CASES}
    assert cluster.allowed("x/a", "y/a", 80, "TCP")  # ingress untouched
    assert cluster.is_isolated("y/a", model.EGRESS)
    assert not cluster.is_isolated("y/a", model.INGRESS)
    # "egress: []" without policyTypes defaults to Ingress only (the server defaults on
    # len(egress) != 0): it denies all ingress and leaves egress open.
    defaulted = _cluster(_policy("y", egress=[]))
    assert model.policy_types(defaulted.policies[0]) == ("Ingress",)
    assert _denied(defaulted, 80, "TCP") == _into("y/a") | _into("y/b") | _into("y/c")
    # An explicit empty policyTypes is defaulted the same way.
    assert model.policy_types(_policy("y", policyTypes=[], egress=[{}])) == (
        "Ingress", "Egress")


def test_allow_all_stacked_on_deny_all_wins_for_each_direction() -> None:
    ingress = _cluster(_policy("x", "deny"), _policy("x", "allow", ingress=[{}]))
    egress = _cluster(_policy("y", "deny", policyTypes=["Egress"]),
                      _policy("y", "allow", policyTypes=["Egress"], egress=[{}]))
    # An empty "from" or "ports" list is as if absent: every peer, every port.
    empty_lists = _cluster(_policy("x", "deny"),
                           _policy("x", "allow", ingress=[{"from": [], "ports": []}]))
    for cluster in (ingress, egress, empty_lists):
        assert _by_case(cluster) == {case: set() for case in CASES}


def test_pod_selector_alone_means_the_policys_namespace() -> None:
    cluster = _cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                               ingress=[{"from": [_pod("b")]}]))
    # y/b and z/b carry pod=b too, but a lone podSelector looks in x only.
    assert _by_case(cluster) == {case: _into("x/a", allowed_from=["x/b"]) for case in CASES}


def test_namespace_selector_by_label_and_by_the_implicit_name_label() -> None:
    by_label = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]))
    assert _denied(by_label, 80, "TCP") == _into("x/a", allowed_from=["y/a", "y/b", "y/c"])
    # z was given with no labels; a namespace not given at all still has its name label.
    for namespaces in (NAMESPACES, NAMESPACES[:2]):
        implicit = model.Cluster(namespaces, PODS, [_policy(
            "x", podSelector=_pod("a")["podSelector"], ingress=[{"from": [_ns("z")]}])])
        assert _denied(implicit, 81, "UDP") == _into("x/a",
                                                      allowed_from=["z/a", "z/b", "z/c"])
    # The server sets the name label whatever the object says.
    lying = model.Cluster([{"metadata": {"name": "z", "labels": {model.NAME_LABEL: "x"}}}])
    assert lying.namespace_labels("z") == {model.NAME_LABEL: "z"}
    # An empty namespaceSelector: every namespace.
    every = _cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                             ingress=[{"from": [{"namespaceSelector": {}}]}]))
    assert _denied(every, 80, "TCP") == set()


def test_both_selectors_in_one_peer_are_anded_two_peers_are_ored() -> None:
    anded = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"from": [{**_ns("y"), **_pod("b")}]}]))
    assert _denied(anded, 80, "TCP") == _into("x/a", allowed_from=["y/b"])
    ored = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"from": [_ns("y"), _pod("b")]}]))
    assert _denied(ored, 80, "TCP") == _into("x/a",
                                             allowed_from=["y/a", "y/b", "y/c", "x/b"])


def test_match_expressions() -> None:
    cluster = _cluster(_policy(
        "x", podSelector={"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["a", "b"]}]},
        ingress=[{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "NotIn", "values": ["red"]}]}}]}]))
    # Selected: x/a, x/b. Allowed in: namespaces not team=red, z (no team label) included.
    from_y_z = ["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
    assert _denied(cluster, 80, "TCP") == (_into("x/a", allowed_from=from_y_z)
                                           | _into("x/b", allowed_from=from_y_z))

    def allowed_in(*expressions: dict[str, Any]) -> set[str]:
        c = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
            {"from": [{"namespaceSelector": {"matchExpressions": list(expressions)},
                       "podSelector": {}}]}]))
        return {s for s in ALL if s != "x/a" and c.allowed(s, "x/a", 80, "TCP")}

    assert allowed_in({"key": "team", "operator": "Exists"}) == {
        "x/b", "x/c", "y/a", "y/b", "y/c"}
    assert allowed_in({"key": "team", "operator": "DoesNotExist"}) == {"z/a", "z/b", "z/c"}
    # matchLabels and matchExpressions are ANDed.
    assert model.selects({"matchLabels": {"pod": "a"}, "matchExpressions": [
        {"key": "pod", "operator": "NotIn", "values": ["a"]}]}, {"pod": "a"}) is False
    with pytest.raises(ValueError, match="unknown selector operator"):
        model.selects({"matchExpressions": [{"key": "k", "operator": "Gt"}]}, {})
    with pytest.raises(ValueError, match="needs values"):
        model.selects({"matchExpressions": [{"key": "k", "operator": "In"}]}, {})


def test_ports_end_port_and_the_default_protocol() -> None:
    only_80 = _cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                               ingress=[{"ports": [{"port": 80}]}]))
    assert _by_case(only_80) == {(80, "TCP"): set(), (80, "UDP"): _into("x/a"),
                                 (81, "TCP"): _into("x/a"), (81, "UDP"): _into("x/a")}
    udp_range = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"ports": [{"port": 80, "endPort": 81, "protocol": "UDP"}]}]))
    assert _by_case(udp_range) == {(80, "TCP"): _into("x/a"), (80, "UDP"): set(),
                                   (81, "TCP"): _into("x/a"), (81, "UDP"): set()}
    # Inclusive at both ends, nothing outside.
    assert [udp_range.allowed("y/b", "x/a", p, "UDP") for p in (79, 80, 81, 82)] == [
        False, True, True, False]
    with pytest.raises(ValueError, match="endPort below port"):
        _cluster(_policy("x", ingress=[{"ports": [{"port": 81, "endPort": 80}]}])).allowed(
            "y/a", "x/a", 80, "TCP")


def test_protocol_only_opens_every_port_of_that_protocol() -> None:
    cluster = _cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                               ingress=[{"ports": [{"protocol": "UDP"}]}]))
    assert _by_case(cluster) == {(80, "TCP"): _into("x/a"), (80, "UDP"): set(),
                                 (81, "TCP"): _into("x/a"), (81, "UDP"): set()}
    assert cluster.allowed("y/a", "x/a", 5353, "UDP")
    assert not cluster.allowed("y/a", "x/a", 5353, "SCTP")


def test_udp_does_not_open_tcp() -> None:
    cluster = _cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                               ingress=[{"ports": [{"port": 80, "protocol": "UDP"}]}]))
    assert _by_case(cluster) == {(80, "TCP"): _into("x/a"), (80, "UDP"): set(),
                                 (81, "TCP"): _into("x/a"), (81, "UDP"): _into("x/a")}


def test_named_ports_resolve_on_the_destination_by_name_and_protocol() -> None:
    def into_x_a(*ports: dict[str, Any]) -> dict[tuple[int, str], set[str]]:
        return _by_case(_cluster(_policy("x", podSelector=_pod("a")["podSelector"],
                                         ingress=[{"ports": list(ports)}])))

    closed = _into("x/a")
    assert into_x_a({"port": "serve-80-tcp"}) == {
        (80, "TCP"): set(), (80, "UDP"): closed, (81, "TCP"): closed, (81, "UDP"): closed}
    # serve-80-udp is a UDP port: asked for over TCP (the default) it resolves to nothing.
    assert into_x_a({"port": "serve-80-udp"}) == {case: closed for case in CASES}
    assert into_x_a({"port": "serve-80-udp", "protocol": "UDP"}) == {
        (80, "TCP"): closed, (80, "UDP"): set(), (81, "TCP"): closed, (81, "UDP"): closed}
    assert into_x_a({"port": "no-such-port"}) == {case: closed for case in CASES}

    # Egress: the name is resolved on each destination. z/d names port 80 serve-81-tcp.
    z_d = layout.pod_spec("z", "d", ip="10.0.3.20", ports=())
    z_d["spec"]["containers"][0]["ports"] = [{"name": "serve-81-tcp", "containerPort": 80}]
    pods = [*PODS, z_d]
    keys = [*ALL, "z/d"]
    cluster = _cluster(_policy("y", podSelector=_pod("a")["podSelector"],
                               policyTypes=["Egress"],
                               egress=[{"ports": [{"port": "serve-81-tcp"}]}]), pods=pods)
    everyone_but_z_d = [k for k in ALL if k != "y/a"]
    assert {d for d in keys if cluster.allowed("y/a", d, 81, "TCP")} == {*ALL}
    assert {d for d in keys if cluster.allowed("y/a", d, 80, "TCP")} == {"y/a", "z/d"}
    assert not any(cluster.allowed("y/a", d, 81, "UDP") for d in everyone_but_z_d)
    # A destination outside the cluster has no named ports.
    assert not cluster.allowed("y/a", "198.51.100.1", 81, "TCP")
    with pytest.raises(ValueError, match="named port"):
        _cluster(_policy("x", ingress=[{"ports": [{"port": "serve-80-tcp", "endPort": 81}]}]
                         )).allowed("y/a", "x/a", 80, "TCP")


def test_ip_block_with_two_disjoint_excepts() -> None:
    cluster = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                               "except": ["10.0.2.0/24", "10.0.3.10/32"]}}]}]))
    # x/* are 10.0.1.x (in), y/* 10.0.2.x (first except), z/a 10.0.3.10 (second except).
    assert _denied(cluster, 80, "TCP") == _into("x/a", allowed_from=[
        "x/b", "x/c", "z/b", "z/c"])
    assert cluster.allowed("10.0.9.9", "x/a", 80, "TCP")
    assert not cluster.allowed("10.0.2.99", "x/a", 80, "TCP")
    assert not cluster.allowed("10.0.3.10", "x/a", 80, "TCP")
    assert not cluster.allowed("192.0.2.1", "x/a", 80, "TCP")
    assert not cluster.allowed("fd00::1", "x/a", 80, "TCP")
    # An excepted address is only not matched by that peer: another peer may match it.
    with_y = _cluster(_policy("x", podSelector=_pod("a")["podSelector"], ingress=[
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}},
                  _ns("y")]}]))
    assert with_y.allowed("y/b", "x/a", 80, "TCP")
    # Egress to an address outside the cluster; selectors never match such an address.
    out = _cluster(_policy("y", podSelector=_pod("a")["podSelector"], policyTypes=["Egress"],
                           egress=[{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}},
                                           {"namespaceSelector": {}}]}]))
    assert out.allowed("y/a", "198.51.100.1", 443, "TCP")
    assert not out.allowed("y/a", "203.0.113.1", 443, "TCP")
    assert out.allowed("y/a", "x/a", 80, "TCP")  # by the namespaceSelector peer
    assert out.allowed("203.0.113.1", "y/a", 80, "TCP")  # y/a's ingress is not isolated


def test_egress_only_and_ingress_only_policies_on_one_pod() -> None:
    cluster = _cluster(
        # Egress-only: its ingress section is ignored (Ingress is not among its types).
        _policy("x", "out", podSelector=_pod("a")["podSelector"], policyTypes=["Egress"],
                egress=[{"to": [_pod("b")]}], ingress=[{}]),
        _policy("x", "in", podSelector=_pod("a")["podSelector"], policyTypes=["Ingress"],
                ingress=[{"from": [_ns("y")]}]))
    expected = (_out_of("x/a", allowed_to=["x/b"])
                | _into("x/a", allowed_from=["y/a", "y/b", "y/c"]))
    assert _by_case(cluster) == {case: expected for case in CASES}


def test_both_ends_must_allow() -> None:
    cluster = _cluster(
        _policy("x", podSelector=_pod("a")["podSelector"], ingress=[{"from": [_ns("y")]}]),
        _policy("y", podSelector=_pod("b")["podSelector"], policyTypes=["Egress"],
                egress=[{"to": [_ns("z")]}]))
    assert cluster.ingress_allows("y/b", "x/a", 80)
    assert not cluster.egress_allows("y/b", "x/a", 80)
    assert not cluster.allowed("y/b", "x/a", 80)
    assert cluster.allowed("y/a", "x/a", 80)


def test_refused_objects_raise_instead_of_being_guessed() -> None:
    for peer in ({}, {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}):
        cluster = _cluster(_policy("x", ingress=[{"from": [peer]}]))
        with pytest.raises(ValueError, match="peer"):
            cluster.allowed("y/a", "x/a", 80, "TCP")
    with pytest.raises(ValueError, match="unknown protocol"):
        _cluster().allowed("y/a", "x/a", 80, "ICMP")
    with pytest.raises(ValueError, match="unknown policy type"):
        _cluster(_policy("x", policyTypes=["Both"]))


def test_matrix_of_the_layout_and_its_diff() -> None:
    cluster = _cluster(_policy("x", podSelector=_pod("a")["podSelector"]))
    expected = cluster.matrix(ALL, cases=[(80, "TCP")])
    assert expected.count(False) == 8 and expected.count(True) == 73
    table = expected.render().splitlines()
    assert table[0] == "TCP/80:"
    assert table[1].split() == ["-", *ALL]
    assert table[2].split() == ["x/a", ".", ".", ".", ".", ".", ".", ".", ".", "."]
    assert table[3].split() == ["x/b", "X", ".", ".", ".", ".", ".", ".", ".", "."]
    observed = matrix.Matrix.build(ALL, ALL, [(80, "TCP")], lambda *_: True)
    observed.set("z/c", "x/a", 80, "TCP", None, note="no-reply")
    found = matrix.diff(expected, observed)
    assert len(found.mismatches) == 8
    assert str(found.mismatches[-1]) == (
        "z/c -> x/a TCP/80: expected denied, observed unknown (no-reply)")
    assert "X*" not in found.render() and ".*" in found.render() and "?*" in found.render()
    assert not matrix.diff(expected, expected)


def test_the_model_imports_nothing_from_kuryr() -> None:
    tree = ast.parse(pathlib.Path(model.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "kuryr"]
