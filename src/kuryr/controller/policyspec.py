"""NetworkPolicy (networking.k8s.io/v1) to security-group rules: pure functions, no I/O.

The translation keeps composition exact with allow-only, unioned security groups:
- A pod is isolated in a direction when some policy of its namespace selects it and has that
  direction in its ``policyTypes`` (defaulted as the API does: Ingress always, Egress when the
  policy has egress rules). A pod not isolated in a direction gets the cluster's allow-all
  group for it (``podgroups``); an isolated one gets only the groups of the policies selecting
  it, so their union is exactly the union of what those policies allow.
- A policy's group holds rules for its own ``policyTypes`` only: an Egress-only policy adds
  no ingress rule, so it never re-opens ingress beside another policy.
- A peer chosen by selectors is an *address group* (``Peer``), named by a hash of its
  canonical selector and shared by every rule of every policy that uses the same one: a pod
  joining or leaving it is an address-group update, no rule changes.
- ``ipBlock`` with ``except`` is the exact set difference (an address group of the remaining
  CIDRs); without ``except``, a plain ``remote_ip_prefix``.
- Ports: a number, a range (``endPort``), a protocol alone (every port), or nothing (every
  protocol). A named port is resolved on the pod that receives the traffic: for ingress on
  the selected pod (a rule with ``namedPort``, resolved per pod by ``variant_rules``: pods that
  resolve it differently get different groups of the same policy); for egress on each peer
  pod (one address group per peer, name, protocol and number, holding the peers that resolve
  it so). A name that resolves nowhere opens nothing.
- Services: egress rules see a Service's VIP, not its backends (OVN's ACL stage comes before
  its load-balancer stage). An egress rule allows a Service port when every endpoint of it is
  a peer the rule allows on the endpoint's target port: a rule to the VIP and that port.

The output is the ``KuryrNetworkPolicy`` spec (upstream's shape: ``ingressSgRules`` and
``egressSgRules`` of ``{sgRule: {...}}``, ``podSelector``, ``policyTypes``), each rule with
kuryr's ``remoteAddressGroup`` (``{name, peer}``) or ``namedPort`` where they apply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kuryr.controller import members
from kuryr.k8s import selectors

ANY_PORT = (1, 65535)
Peer = dict[str, Any]  # the canonical description of an address group's members


@dataclasses.dataclass(frozen=True)
class PodView:
    """What the translation needs of a pod."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ips: tuple[str, ...]
    # Named container ports: (name, protocol, number).
    ports: tuple[tuple[str, str, int], ...] = ()

    def resolve(self, name: str, protocol: str) -> int | None:
        return next((n for p, proto, n in self.ports if p == name and proto == protocol), None)


@dataclasses.dataclass
class View:
    """The cluster as the informers show it: pods with addresses, namespace labels, the
    Services' load balancer specs, the nodes' addresses, and the IP versions in use."""

    pods: list[PodView]
    namespaces: dict[str, dict[str, str]]  # name -> labels (with metadata.name)
    load_balancers: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)
    node_addresses: set[str] = dataclasses.field(default_factory=set)

    def __post_init__(self) -> None:
        self._by_ip = {ip: pod for pod in self.pods for ip in pod.ips}

    def pod_at(self, ip: str) -> PodView | None:
        return self._by_ip.get(ip)

    @property
    def ip_versions(self) -> set[int]:
        """IPv4 always; IPv6 once a pod has an IPv6 address."""
        return {4} | {ipaddress.ip_address(ip).version for pod in self.pods for ip in pod.ips}


def policy_types(policy: Mapping[str, Any]) -> list[str]:
    """``spec.policyTypes``, defaulted as the API server does."""
    spec = policy.get("spec") or {}
    given = spec.get("policyTypes")
    if given:
        return sorted({str(t) for t in given})
    return ["Egress", "Ingress"] if spec.get("egress") else ["Ingress"]


def selects(policy: Mapping[str, Any], pod: PodView) -> bool:
    """Whether the policy applies to the pod (its namespace, its podSelector)."""
    if pod.namespace != policy["metadata"]["namespace"]:
        return False
    return selectors.matches((policy.get("spec") or {}).get("podSelector") or {}, pod.labels)


def group_name(cluster_id: str, peer: Peer) -> str:
    """The Neutron name of a peer's address group."""
    digest = hashlib.sha256(_json(peer).encode()).hexdigest()[:20]
    return f"kuryr-{cluster_id}-ag-{digest}"


def translate(policy: Mapping[str, Any], view: View, *, cluster_id: str) -> dict[str, Any]:
    """The KuryrNetworkPolicy spec of a NetworkPolicy. Raises PermanentError on a selector
    operator or CIDR the API would have refused."""
    spec = policy.get("spec") or {}
    namespace = str(policy["metadata"]["namespace"])
    types = policy_types(policy)
    label = f"kuryr: networkpolicy {namespace}/{policy['metadata']['name']}"
    builder = _Rules(namespace, view, cluster_id, label)
    ingress: list[dict[str, Any]] = []
    egress: list[dict[str, Any]] = []
    if "Ingress" in types:
        for rule in spec.get("ingress") or []:
            ingress += builder.rules("ingress", rule.get("from") or [], rule.get("ports") or [])
    if "Egress" in types:
        for rule in spec.get("egress") or []:
            egress += builder.rules("egress", rule.get("to") or [], rule.get("ports") or [])
            egress += builder.service_rules(rule.get("to") or [], rule.get("ports") or [])
    return {"podSelector": selectors.canonical(spec.get("podSelector") or {}),
            "policyTypes": types, "ingressSgRules": _unique(ingress),
            "egressSgRules": _unique(egress)}


def variant_rules(spec: Mapping[str, Any], pod: PodView | None) -> tuple[str, list[dict[str, Any]]]:
    """The rules of a policy's group for ``pod`` (None: the base group, no named port
    resolved) and the variant's name ("" for the base): the named ingress ports resolved on
    the pod, the rest as they are."""
    rules: list[dict[str, Any]] = []
    resolved: list[str] = []
    for item in _items(spec):
        named = item.get("namedPort")
        if not named:
            rules.append(dict(item))
            continue
        number = pod.resolve(named["name"], named["protocol"]) if pod is not None else None
        if number is None:
            continue  # resolves nowhere on this pod: opens nothing
        rule = dict(item["sgRule"])
        rule["port_range_min"] = rule["port_range_max"] = number
        rules.append({**{k: v for k, v in item.items() if k != "namedPort"}, "sgRule": rule})
        resolved.append(f"{named['name']}/{named['protocol']}={number}")
    variant = hashlib.sha256(",".join(sorted(set(resolved))).encode()).hexdigest()[:8] \
        if resolved else ""
    return variant, rules


def peers_of(spec: Mapping[str, Any]) -> dict[str, Peer]:
    """The address groups a KuryrNetworkPolicy spec refers to, by name."""
    found: dict[str, Peer] = {}
    for item in _items(spec):
        group = item.get("remoteAddressGroup")
        if group:
            found[str(group["name"])] = group["peer"]
    return found


def addresses(peer: Peer, view: View) -> set[str]:
    """The CIDRs an address group of ``peer`` holds now (pods' addresses as /32 or /128)."""
    if "cidrs" in peer:
        return {str(ipaddress.ip_network(c, strict=False)) for c in peer["cidrs"]}
    if "nodes" in peer:
        return {_host(ip) for ip in view.node_addresses}
    if "named" in peer:
        named = peer["named"]
        inner = named["peer"]
        return {_host(ip) for pod in _pods_of(inner, view)
                if pod.resolve(named["name"], named["protocol"]) == named["number"]
                for ip in _ips_in(inner, pod)}
    return {_host(ip) for pod in _pods_of(peer, view) for ip in pod.ips}


def nodes_peer() -> Peer:
    """The address group of the nodes' addresses (kubelet probes reach every pod)."""
    return {"nodes": True}


def difference(cidr: str, excepts: Iterable[str]) -> list[str]:
    """``cidr`` minus every ``except`` CIDR, as the fewest CIDRs. Raises ValueError."""
    remaining = [ipaddress.ip_network(cidr, strict=False)]
    for text in excepts:
        cut = ipaddress.ip_network(text, strict=False)
        kept: list[Any] = []
        for net in remaining:
            if net.version != cut.version or not net.overlaps(cut):
                kept.append(net)
            elif net.subnet_of(cut):  # type: ignore[arg-type]
                continue
            else:
                kept.extend(net.address_exclude(cut))  # type: ignore[arg-type]
        remaining = kept
    return [str(n) for n in ipaddress.collapse_addresses(sorted(remaining))]  # type: ignore


class _Rules:
    """Builds the rules of one policy."""

    def __init__(self, namespace: str, view: View, cluster_id: str, label: str) -> None:
        self.namespace = namespace
        self.view = view
        self.cluster_id = cluster_id
        self.label = label

    def rules(self, direction: str, peers: list[Mapping[str, Any]],
              ports: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        # None: from or to anywhere; every port.
        targets: list[tuple[str, Any] | None] = [self._peer(p) for p in peers] or [None]
        found: list[dict[str, Any]] = []
        for target in targets:
            choices: list[Mapping[str, Any] | None] = [*ports] or [None]
            for port in choices:
                found += self._rules_for(direction, target, port)
        return found

    def _rules_for(self, direction: str, target: tuple[str, Any] | None,
                   port: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        protocol, low, high, name = _port(port)
        if name is not None and direction == "egress":
            # Resolved on the peers: one address group per number they resolve it to.
            if target is None:
                inner: Peer = {"pods": {"all": True}}
            elif target[0] == "prefix":
                inner = {"cidrs": [target[1]]}
            else:
                inner = target[1]
            numbers = sorted({n for pod in _pods_of(inner, self.view)
                              if (n := pod.resolve(name, protocol or "TCP")) is not None
                              and any(True for _ in _ips_in(inner, pod))})
            found = []
            for number in numbers:
                peer = {"named": {"peer": inner, "name": name, "protocol": protocol or "TCP",
                                  "number": number}}
                found += self._made(direction, ("group", peer), protocol, number, number)
            return found
        made = self._made(direction, target, protocol, low, high)
        if name is not None:  # ingress: resolved on each selected pod (variant_rules)
            for item in made:
                item["namedPort"] = {"name": name, "protocol": protocol or "TCP"}
        return made

    def _made(self, direction: str, target: tuple[str, Any] | None, protocol: str | None,
              low: int | None, high: int | None) -> list[dict[str, Any]]:
        if target is None:
            versions = sorted(self.view.ip_versions | {6})
            return [self._rule(direction, v, protocol, low, high) for v in versions]
        kind, value = target
        if kind == "prefix":
            version = ipaddress.ip_network(value).version
            prefix = None if ipaddress.ip_network(value).prefixlen == 0 else value
            return [self._rule(direction, version, protocol, low, high, prefix=prefix)]
        peer: Peer = value
        if "cidrs" in peer:
            versions = sorted({ipaddress.ip_network(c).version for c in peer["cidrs"]})
        else:
            versions = sorted(self.view.ip_versions)
        group = {"name": group_name(self.cluster_id, peer), "peer": peer}
        return [{**self._rule(direction, v, protocol, low, high), "remoteAddressGroup": group}
                for v in versions]

    def _rule(self, direction: str, version: int, protocol: str | None, low: int | None,
              high: int | None, *, prefix: str | None = None) -> dict[str, Any]:
        rule: dict[str, Any] = {"direction": direction, "ethertype": f"IPv{version}",
                                "description": self.label}
        if protocol is not None:
            rule["protocol"] = protocol.lower()
        if low is not None and (low, high) != ANY_PORT:
            rule["port_range_min"], rule["port_range_max"] = low, high
        if prefix is not None:
            rule["remote_ip_prefix"] = prefix
        return {"sgRule": rule}

    def _peer(self, peer: Mapping[str, Any]) -> tuple[str, Any]:
        """("group", Peer) or ("prefix", cidr)."""
        block = peer.get("ipBlock")
        if block:
            cidr = str(ipaddress.ip_network(block["cidr"], strict=False))
            excepts = block.get("except") or []
            if not excepts:
                return ("prefix", cidr)
            return ("group", {"cidrs": difference(cidr, excepts)})
        selection: dict[str, Any] = {}
        if peer.get("namespaceSelector") is not None:
            selection["namespaceSelector"] = selectors.canonical(peer["namespaceSelector"])
        else:
            selection["namespace"] = self.namespace
        if peer.get("podSelector") is not None:
            selection["podSelector"] = selectors.canonical(peer["podSelector"])
        return ("group", {"pods": selection})

    def service_rules(self, peers: list[Mapping[str, Any]],
                      ports: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Egress to the VIP of every Service port whose endpoints this rule all allows."""
        allowed = _Allows([self._peer(p) for p in peers], ports, self.view)
        found: list[dict[str, Any]] = []
        for spec in self.view.load_balancers:
            vip = spec.get("ip")
            if not vip:
                continue
            for service_port in members.service_ports(spec):
                chosen = members.desired_members(spec, service_port, subnet_of=lambda _: None)
                if chosen and all(allowed(m.address, service_port.protocol, m.protocol_port)
                                  for m in chosen):
                    version = ipaddress.ip_address(vip).version
                    rule = self._rule("egress", version, service_port.protocol,
                                      service_port.port, service_port.port,
                                      prefix=_host(str(vip)))
                    rule["sgRule"]["description"] = f"{self.label}: Service VIP {vip}"
                    found.append(rule)
        return found


class _Allows:
    """Whether an egress rule's peers and ports allow one destination address and port."""

    def __init__(self, targets: list[tuple[str, Any]], ports: list[Mapping[str, Any]],
                 view: View) -> None:
        self.targets = targets
        self.ports = ports
        self.view = view

    def __call__(self, address: str, protocol: str, number: int) -> bool:
        pod = self.view.pod_at(address)
        if self.targets and not any(self._has(t, address, pod) for t in self.targets):
            return False
        if not self.ports:
            return True
        for port in self.ports:
            proto, low, high, name = _port(port)
            if (proto or "TCP") != protocol:
                continue
            if name is not None:
                if pod is not None and pod.resolve(name, protocol) == number:
                    return True
            elif low is None or (low <= number <= (high or low)):
                return True
        return False

    def _has(self, target: tuple[str, Any], address: str, pod: PodView | None) -> bool:
        kind, value = target
        if kind == "prefix":
            return ipaddress.ip_address(address) in ipaddress.ip_network(value)
        if "cidrs" in value:
            return any(ipaddress.ip_address(address) in ipaddress.ip_network(c)
                       for c in value["cidrs"])
        return pod is not None and pod in _pods_of(value, self.view)


def _port(port: Mapping[str, Any] | None) -> tuple[str | None, int | None, int | None,
                                                     str | None]:
    """(protocol, low, high, name) of a NetworkPolicyPort; None protocol: every protocol."""
    if port is None:
        return None, None, None, None
    protocol = str(port.get("protocol") or "TCP").upper()
    number = port.get("port")
    if number is None:
        return protocol, None, None, None
    if isinstance(number, str) and not number.isdigit():
        return protocol, None, None, number
    low = int(number)
    high = int(port["endPort"]) if port.get("endPort") is not None else low
    return protocol, low, max(low, high), None


def _pods_of(peer: Peer, view: View) -> list[PodView]:
    if "cidrs" in peer:
        return [pod for pod in view.pods if any(True for _ in _ips_in(peer, pod))]
    selection = peer.get("pods") or {}
    if selection.get("all"):
        return list(view.pods)
    if "namespaceSelector" in selection:
        chosen = {name for name, labels in view.namespaces.items()
                  if selectors.matches(selection["namespaceSelector"], labels)}
    else:
        chosen = {str(selection.get("namespace"))}
    pod_selector = selection.get("podSelector")
    return [pod for pod in view.pods if pod.namespace in chosen
            and (pod_selector is None or selectors.matches(pod_selector, pod.labels))]


def _ips_in(peer: Peer, pod: PodView) -> Iterable[str]:
    if "cidrs" not in peer:
        return pod.ips
    nets = [ipaddress.ip_network(c, strict=False) for c in peer["cidrs"]]
    return [ip for ip in pod.ips if any(ipaddress.ip_address(ip) in n for n in nets)]


def _host(ip: str) -> str:
    address = ipaddress.ip_address(ip.split("/")[0])
    return f"{address}/{address.max_prefixlen}"


def _unique(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for rule in rules:
        seen.setdefault(_json({k: v for k, v in rule.items() if k != "sgRule"}
                              | {"sgRule": {k: v for k, v in rule["sgRule"].items()
                                            if k != "description"}}), rule)
    return [seen[k] for k in sorted(seen)]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pod_view(pod: Mapping[str, Any], ips: Iterable[str]) -> PodView:
    """A PodView of a Pod object and its addresses."""
    meta = pod["metadata"]
    named = tuple((str(p["name"]), str(p.get("protocol") or "TCP").upper(),
                   int(p["containerPort"]))
                  for c in (pod.get("spec") or {}).get("containers") or []
                  for p in c.get("ports") or [] if p.get("name") and p.get("containerPort"))
    return PodView(str(meta["namespace"]), str(meta["name"]), dict(meta.get("labels") or {}),
                   tuple(ips), named)



def describe(peer: Peer) -> str:
    """A peer in one line (address group descriptions, logs)."""
    return _json(peer)


def _items(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("ingressSgRules") or []), *(spec.get("egressSgRules") or [])]
