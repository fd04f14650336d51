"""A reference evaluator of Kubernetes ``networking.k8s.io/v1`` NetworkPolicy, written from the
API reference and the concepts page, for the expected side of a truth table.

It is independent of kuryr's controller on purpose (it imports nothing from ``kuryr``): the
data plane is checked against what the specification says, not against the code under test.
Inputs are plain Kubernetes JSON dicts (Namespaces, Pods, NetworkPolicies) as the API returns
them; the evaluator applies the API server's defaults itself.

The rules it implements (quotes are from the API reference unless said otherwise):

- A policy applies to the pods of its own namespace that its ``spec.podSelector`` selects (an
  absent podSelector is the empty selector: every pod of the namespace).
- ``policyTypes``: when absent or empty, ``["Ingress"]``, plus ``"Egress"`` when the policy has
  at least one egress rule (the server's defaulting is ``len(spec.egress) != 0``, so
  ``egress: []`` alone does not make a policy an egress one). A policy's rules of a type not in
  its policyTypes are ignored.
- A pod is isolated for a direction when at least one policy selecting it has that type; a
  non-isolated direction allows everything. An isolated direction allows what at least one
  rule of those policies matches ("the traffic matches at least one ingress rule across all of
  the NetworkPolicy objects whose podSelector matches the pod").
- Traffic between two pods is allowed only if the source's egress AND the destination's
  ingress allow it (concepts page). An address outside the cluster has no policies: only the
  pod end is checked.
- A rule matches when its peers and its ports both match. ``from``/``to`` "empty or missing":
  all peers; ``ports`` "empty or missing": all ports. Peers are ORed, so are ports.
- A peer: ``podSelector`` alone, the pods it selects in the policy's namespace;
  ``namespaceSelector`` alone, every pod of the namespaces it selects; both, "the pods matching
  podSelector in the Namespaces selected by NamespaceSelector" (AND); ``ipBlock``, addresses in
  ``cidr`` and in none of ``except``. ipBlock is matched on the address, pods' addresses
  included (the concepts page says ipBlocks "should be cluster-external IPs, since Pod IPs are
  ephemeral and unpredictable"; upstream's e2e suite does match pod IPs with it). Selectors
  never match an address outside the cluster.
- Label selectors: ``matchLabels`` and ``matchExpressions`` (``In``, ``NotIn``, ``Exists``,
  ``DoesNotExist``) all ANDed; ``NotIn`` and ``DoesNotExist`` match objects without the key; an
  empty selector matches everything.
- Every namespace carries ``kubernetes.io/metadata.name: <name>``, set by the API server whatever
  the object says; a namespace no dict was given for has that label only.
- A port: ``protocol`` defaults to TCP and must equal the traffic's; no ``port``: every port of
  that protocol; a number, that port or, with ``endPort``, "the range of ports from port to
  endPort ... inclusive"; a name, resolved on the DESTINATION pod's containers' ports by name
  and protocol (container ports default to TCP): it matches the traffic's port when one of
  them has that name, that protocol and that number. A name that resolves nowhere (or a
  destination outside the cluster) opens nothing.
- A pod's traffic to itself is allowed ("a pod cannot block access to itself", concepts page)
  unless ``self_traffic_allowed=False``, which evaluates it like any other pair.
- Not modelled: traffic from the pod's own node (always allowed by the specification), Services
  (address rewriting is "not defined" relative to policy processing), hostNetwork pods.

Objects the API server would refuse (a peer with no field or with ipBlock and a selector,
``endPort`` with a named port or below ``port``, an unknown operator or protocol) raise
``ValueError`` instead of being guessed at.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from tests.support.netpol import matrix

NAME_LABEL = "kubernetes.io/metadata.name"
PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS, EGRESS = "Ingress", "Egress"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Object = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Pod:
    """What policies see of a pod."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: Address | None
    ports: tuple[tuple[str, str, int], ...]  # (name, protocol, containerPort) of named ports

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class External:
    """An address outside the cluster: no labels, no namespace, no policies."""

    ip: Address

    @property
    def key(self) -> str:
        return str(self.ip)


Party = Pod | External
# Who is at one end: a pod (its dict, its "namespace/name" or a ``Pod``), or an address outside
# the cluster (an ipaddress object, its text or an ``External``).
Endpoint = Object | str | Address | Party


def pod_from_dict(pod: Object) -> Pod:
    """The pod as policies see it: namespace, name, labels, its first IP (``status.podIP``,
    else ``status.podIPs[0].ip``) and its named container ports. Raises ``ValueError`` if it
    has no namespace or name."""
    meta = pod.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not namespace or not name:
        raise ValueError(f"a pod needs metadata.namespace and metadata.name: {meta}")
    status = pod.get("status") or {}
    text = status.get("podIP") or next(
        (entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")), None)
    ports = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name"):
                protocol = _protocol(port.get("protocol"))
                ports.append((port["name"], protocol, int(port["containerPort"])))
    return Pod(namespace=namespace, name=name, labels=dict(meta.get("labels") or {}),
               ip=ipaddress.ip_address(text) if text else None, ports=tuple(ports))


def _protocol(value: str | None) -> str:
    protocol = value or "TCP"
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (one of {', '.join(PROTOCOLS)})")
    return protocol


def selects(selector: Object | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels``: matchLabels and every matchExpression
    hold. ``None`` (no selector) matches nothing; ``{}`` matches everything. Raises
    ``ValueError`` for an unknown operator or values the API server would refuse."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = list(expression.get("values") or [])
        if operator in ("In", "NotIn"):
            if not values:
                raise ValueError(f"{operator} needs values: {expression}")
            present = key in labels and labels[key] in values
            if present != (operator == "In"):
                return False
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                raise ValueError(f"{operator} takes no values: {expression}")
            if (key in labels) != (operator == "Exists"):
                return False
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    return True


def policy_types(policy: Object) -> tuple[str, ...]:
    """The policy's types after the API server's defaulting (see the module docstring).
    Raises ``ValueError`` for a type that is neither Ingress nor Egress."""
    spec = policy.get("spec") or {}
    given = list(spec.get("policyTypes") or [])
    if not given:
        given = [INGRESS, *([EGRESS] if spec.get("egress") else [])]
    for kind in given:
        if kind not in (INGRESS, EGRESS):
            raise ValueError(f"unknown policy type {kind!r}")
    return tuple(given)


class Cluster:
    """Namespaces, pods and policies, and what traffic they allow.

    ``self_traffic_allowed`` (default ``True``, the specification's "a pod cannot block access
    to itself"): a pod's traffic to itself is allowed whatever the policies say; with
    ``False`` it is evaluated as traffic between two pods.
    """

    def __init__(self, namespaces: Iterable[Object] = (), pods: Iterable[Object] = (),
                 policies: Iterable[Object] = (), *, self_traffic_allowed: bool = True) -> None:
        self.self_traffic_allowed = self_traffic_allowed
        self._namespace_labels: dict[str, dict[str, str]] = {}
        for namespace in namespaces:
            meta = namespace.get("metadata") or {}
            name = meta["name"]
            self._namespace_labels[name] = {**(meta.get("labels") or {}), NAME_LABEL: name}
        self.pods: dict[str, Pod] = {}
        for raw in pods:
            pod = pod_from_dict(raw)
            self.pods[pod.key] = pod
        self.policies = list(policies)
        for policy in self.policies:
            if not (policy.get("metadata") or {}).get("namespace"):
                raise ValueError("a NetworkPolicy needs metadata.namespace: "
                                 f"{policy.get('metadata')}")
            policy_types(policy)

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The namespace's labels, ``kubernetes.io/metadata.name`` included."""
        return self._namespace_labels.get(name, {NAME_LABEL: name})

    def party(self, endpoint: Endpoint) -> Party:
        """The pod or outside address ``endpoint`` names. Raises ``KeyError`` for a
        ``namespace/name`` of no known pod."""
        if isinstance(endpoint, Pod | External):
            return endpoint
        if isinstance(endpoint, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return External(endpoint)
        if isinstance(endpoint, str):
            try:
                return External(ipaddress.ip_address(endpoint))
            except ValueError:
                return self.pods[endpoint]
        # A dict given here is taken as it is, even if one of that name was given before.
        return pod_from_dict(endpoint)

    def policies_selecting(self, pod: Pod, direction: str) -> list[Object]:
        """The policies of the pod's namespace that select it and have ``direction`` among
        their types."""
        return [p for p in self.policies
                if p["metadata"]["namespace"] == pod.namespace
                and selects((p.get("spec") or {}).get("podSelector") or {}, pod.labels)
                and direction in policy_types(p)]

    def is_isolated(self, endpoint: Endpoint, direction: str) -> bool:
        """Whether some policy isolates the pod for ``direction`` (``"Ingress"`` or
        ``"Egress"``); an outside address never is."""
        party = self.party(endpoint)
        return isinstance(party, Pod) and bool(self.policies_selecting(party, direction))

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether traffic from ``src`` to ``dst`` on ``port``/``protocol`` is allowed: the
        source's egress and the destination's ingress both allow it (or it is a pod's traffic
        to itself, see the class). Raises ``ValueError`` for an unknown protocol or a policy the
        API server would refuse, ``KeyError`` for an unknown ``namespace/name``."""
        protocol = _protocol(protocol)
        source, destination = self.party(src), self.party(dst)
        if (self.self_traffic_allowed and isinstance(source, Pod)
                and isinstance(destination, Pod) and source.key == destination.key):
            return True
        return (self._direction_allows(EGRESS, source, destination, port, protocol)
                and self._direction_allows(INGRESS, source, destination, port, protocol))

    def egress_allows(self, src: Endpoint, dst: Endpoint, port: int,
                      protocol: str = "TCP") -> bool:
        """The source's side only: whether its egress lets the traffic out."""
        return self._direction_allows(EGRESS, self.party(src), self.party(dst), port,
                                      _protocol(protocol))

    def ingress_allows(self, src: Endpoint, dst: Endpoint, port: int,
                       protocol: str = "TCP") -> bool:
        """The destination's side only: whether its ingress lets the traffic in."""
        return self._direction_allows(INGRESS, self.party(src), self.party(dst), port,
                                      _protocol(protocol))

    def _direction_allows(self, direction: str, src: Party, dst: Party, port: int,
                          protocol: str) -> bool:
        subject, peer = (dst, src) if direction == INGRESS else (src, dst)
        if not isinstance(subject, Pod):
            return True
        policies = self.policies_selecting(subject, direction)
        if not policies:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == INGRESS else ("egress", "to")
        for policy in policies:
            namespace = policy["metadata"]["namespace"]
            for rule in (policy.get("spec") or {}).get(rules_key) or []:
                peers = (rule or {}).get(peers_key) or []
                if peers and not any(self._peer_matches(p, peer, namespace) for p in peers):
                    continue
                ports = (rule or {}).get("ports") or []
                if ports and not any(_port_matches(p, dst, port, protocol) for p in ports):
                    continue
                return True
        return False

    def _peer_matches(self, peer: Object, party: Party, namespace: str) -> bool:
        ip_block = peer.get("ipBlock")
        pod_selector = peer.get("podSelector")
        namespace_selector = peer.get("namespaceSelector")
        if ip_block is not None:
            if pod_selector is not None or namespace_selector is not None:
                raise ValueError(f"a peer with ipBlock can have no selector: {peer}")
            return party.ip is not None and _in_block(ip_block, party.ip)
        if pod_selector is None and namespace_selector is None:
            raise ValueError(f"a peer needs podSelector, namespaceSelector or ipBlock: {peer}")
        if not isinstance(party, Pod):
            return False
        if namespace_selector is None:
            in_namespaces = party.namespace == namespace
        else:
            in_namespaces = selects(namespace_selector, self.namespace_labels(party.namespace))
        return in_namespaces and selects(pod_selector or {}, party.labels)

    def matrix(self, froms: Iterable[Endpoint], tos: Iterable[Endpoint] | None = None, *,
               cases: Iterable[matrix.Case]) -> matrix.Matrix:
        """The expected truth table: every (from, to) of ``froms`` x ``tos`` (default:
        ``froms``) for every (port, protocol) of ``cases``, keyed ``namespace/name`` for
        pods and by IP for outside addresses."""
        sources = [self.party(e) for e in froms]
        destinations = sources if tos is None else [self.party(e) for e in tos]
        by_key = {p.key: p for p in (*sources, *destinations)}
        return matrix.Matrix.build(
            [p.key for p in sources], [p.key for p in destinations], cases,
            lambda s, d, port, protocol: self.allowed(by_key[s], by_key[d], port, protocol))


def _in_block(ip_block: Object, ip: Address) -> bool:
    cidr = ipaddress.ip_network(ip_block["cidr"], strict=False)
    if ip.version != cidr.version or ip not in cidr:
        return False
    for text in ip_block.get("except") or []:
        excepted = ipaddress.ip_network(text, strict=False)
        if ip.version == excepted.version and ip in excepted:
            return False
    return True


def _port_matches(entry: Object, dst: Party, port: int, protocol: str) -> bool:
    if _protocol(entry.get("protocol")) != protocol:
        return False
    wanted = entry.get("port")
    end = entry.get("endPort")
    if wanted is None:
        if end is not None:
            raise ValueError(f"endPort needs port: {entry}")
        return True
    if isinstance(wanted, str):
        if end is not None:
            raise ValueError(f"endPort cannot go with a named port: {entry}")
        if not isinstance(dst, Pod):
            return False
        return any(name == wanted and proto == protocol and number == port
                   for name, proto, number in dst.ports)
    if end is None:
        return port == int(wanted)
    if int(end) < int(wanted):
        raise ValueError(f"endPort below port: {entry}")
    return int(wanted) <= port <= int(end)
