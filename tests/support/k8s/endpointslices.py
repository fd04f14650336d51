"""A stand-in for kube-controller-manager's EndpointSlice controller inside the API double: it
hears every store event and, once the write that caused it is done (``Store.after_writes``),
brings the slices of the Services concerned up to date: a test sees them right after its write.

It follows upstream's reconciler (k8s.io/endpointslice). For a Service with a selector (not
ExternalName), the matching pods of its namespace that have an IP, are not Succeeded/Failed and
whose Node exists are endpoints: ``addresses``, ``conditions`` (``serving``: pod Ready,
``terminating``: deletionTimestamp set, ``ready``: serving and not terminating, or
publishNotReadyAddresses), ``targetRef``, ``nodeName``, ``zone``, ``hostname``. Ports resolve
per pod (a named targetPort from the containers' ports of the same protocol; unresolved ones
left out) and endpoints with the same port set share slices (100 endpoints at most). Slices
(generateName ``<service>-``) carry the Service's labels plus ``kubernetes.io/service-name``,
``endpointslice.kubernetes.io/managed-by`` (and ``service.kubernetes.io/headless``), a controller
ownerReference to the Service (garbage collection removes them with it), are written only when
they change, and reused where upstream reuses them; a Service with nothing to serve has one
placeholder slice. Empty ``endpoints`` and ``ports`` read back as null, as from the real server.
Services without a selector are left alone (their slices are the user's), and so are the slices
of a Service that loses its selector or becomes ExternalName, as upstream does.

Not done: topology hints, trafficDistribution, the last-change-trigger-time annotation, and
the Endpoints (v1) controller.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

from tests.support.k8s import errors, registry, store

CONTROLLER = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
HEADLESS = "service.kubernetes.io/headless"
ZONE = "topology.kubernetes.io/zone"
MAX_ENDPOINTS = 100  # kube-controller-manager's --max-endpoints-per-slice default

_RESERVED = (SERVICE_NAME, MANAGED_BY, HEADLESS)

Object = store.Object
ServiceKey = tuple[str, str]  # (namespace, name)


def _kind(resource: registry.Resource) -> tuple[str, str]:
    return (resource.group, resource.plural)


def _labels(obj: Object | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Controller:
    """The EndpointSlice controller of one store; ``install`` starts it."""

    def __init__(self, objects: store.Store, *, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self._store = objects
        self.max_endpoints = max_endpoints
        self._dirty: set[ServiceKey] = set()
        self._is_syncing = False
        self._is_settling = False

    def install(self) -> None:
        self._store.subscribe(self._observe)
        self._store.after_writes(self.settle)
        for service in self._store.view(registry.SERVICES, None):
            self._dirty.add((service["metadata"]["namespace"], service["metadata"]["name"]))
        self.settle()

    # -- what to sync ---------------------------------------------------------------------

    def _observe(self, event: store.Event) -> None:
        kind = _kind(event.resource)
        namespace = event.namespace
        if kind == ("", "services"):
            self._dirty.add((namespace, event.object["metadata"]["name"]))
        elif kind == ("", "pods"):
            if not _may_change_endpoints(event):
                return
            wanted = [_labels(event.object), _labels(event.previous)]
            for service in self._store.view(registry.SERVICES, namespace):
                selector = (service.get("spec") or {}).get("selector")
                if selector and any(_matches(selector, labels) for labels in wanted):
                    self._dirty.add((namespace, service["metadata"]["name"]))
        elif kind == ("", "nodes"):
            for service in self._store.view(registry.SERVICES, None):
                self._dirty.add((service["metadata"]["namespace"], service["metadata"]["name"]))
        elif kind == _kind(registry.ENDPOINT_SLICES) and not self._is_syncing:
            # Someone else changed a managed slice: the controller puts it back.
            for labels in (_labels(event.object), _labels(event.previous)):
                if labels.get(MANAGED_BY) == CONTROLLER and labels.get(SERVICE_NAME):
                    self._dirty.add((namespace, labels[SERVICE_NAME]))

    def settle(self) -> None:
        """Sync every Service that a change concerned, until none is left."""
        if self._is_settling:
            return
        self._is_settling = True
        try:
            while self._dirty:
                key = min(self._dirty)
                self._dirty.discard(key)
                self._is_syncing = True
                try:
                    self.sync(*key)
                except errors.ApiError:
                    pass  # e.g. a terminating namespace: upstream drops the item too
                finally:
                    self._is_syncing = False
        finally:
            self._is_settling = False

    # -- one Service ----------------------------------------------------------------------

    def sync(self, namespace: str, name: str) -> None:
        """Bring the slices of one Service up to date (upstream's syncService)."""
        try:
            service = self._store.get(registry.SERVICES, namespace, name)
        except errors.ApiError as error:
            if error.code == 404:
                return  # its slices go with it (ownerReference garbage collection)
            raise
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName" or not spec.get("selector"):
            return
        # The stored objects themselves: read only, a slice is copied before it is changed.
        pods = [pod for pod in self._store.view(registry.PODS, namespace)
                if _matches(spec["selector"], _labels(pod))]
        nodes = {n["metadata"]["name"]: n for n in self._store.view(registry.NODES, None)}
        owned = {SERVICE_NAME: name, MANAGED_BY: CONTROLLER}
        existing = [s for s in self._store.view(registry.ENDPOINT_SLICES, namespace)
                    if all(_labels(s).get(k) == v for k, v in owned.items())
                    and not s["metadata"].get("deletionTimestamp")]
        families = _address_types(spec)
        create: list[Object] = []
        update: list[Object] = []
        delete: list[Object] = []
        for family in sorted(families):
            of_family = [s for s in existing if s.get("addressType") == family]
            made, changed, gone = self._reconcile(service, pods, nodes, of_family, family)
            create += made
            update += changed
            delete += gone
        delete += [s for s in existing if s.get("addressType") not in families]
        self._finalize(service, create, update, delete)

    def _reconcile(self, service: Object, pods: list[Object], nodes: dict[str, Object],
                   existing: list[Object], family: str
                   ) -> tuple[list[Object], list[Object], list[Object]]:
        """Upstream's reconcileByAddressType: (slices to create, to update, to delete)."""
        delete = [s for s in existing if not _owned_by(s, service)]
        by_ports: dict[str, list[Object]] = {}
        for piece in existing:
            if _owned_by(piece, service):
                by_ports.setdefault(_port_key(piece.get("ports")), []).append(piece)
        spec = service.get("spec") or {}
        publish = bool(spec.get("publishNotReadyAddresses"))
        wanted: dict[str, dict[tuple[Any, ...], Object]] = {}
        wanted_ports: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            if not _should_be_endpoint(pod):
                continue
            ports = endpoint_ports(service, pod)
            key = _port_key(ports)
            wanted.setdefault(key, {})
            wanted_ports.setdefault(key, ports)
            node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
            if node is None and not publish:
                continue  # upstream skips a pod whose Node is not found
            endpoint = pod_endpoint(pod, node, service, family)
            if endpoint["addresses"]:
                wanted[key][_endpoint_key(endpoint)] = endpoint
        create: list[Object] = []
        update: list[Object] = []
        for key, endpoints in wanted.items():
            made, changed, gone = self._by_ports(service, by_ports.get(key, []), endpoints,
                                                 wanted_ports[key], family)
            create += made
            update += changed
            delete += gone
        for key, pieces in by_ports.items():
            if key not in wanted:
                delete += pieces
        if len(existing) == len(delete) and not create:
            placeholder = new_slice(service, [], family)
            if len(delete) == 1 and _same_placeholder(delete[0], placeholder):
                delete = []
            else:
                create.append(placeholder)
        return create, update, delete

    def _by_ports(self, service: Object, existing: list[Object],
                  wanted: dict[tuple[Any, ...], Object], ports: list[dict[str, Any]],
                  family: str) -> tuple[list[Object], list[Object], list[Object]]:
        """Upstream's reconcileByPortMapping for the slices of one port set."""
        by_name: dict[str, Object] = {}
        unchanged: list[str] = []
        to_update: list[str] = []
        to_delete: list[str] = []
        for piece in existing:
            name = piece["metadata"]["name"]
            by_name[name] = piece
            old_endpoints = piece.get("endpoints") or []
            kept: list[Object] = []
            is_changed = False
            for endpoint in old_endpoints:
                found = wanted.pop(_endpoint_key(endpoint), None)
                if found is not None:
                    kept.append(found)
                    is_changed = is_changed or not _same_beyond_key(found, endpoint)
            labels, is_relabelled = slice_labels(piece, service)
            if is_changed or len(kept) != len(old_endpoints):
                if not kept:
                    to_delete.append(name)
                    continue
                changed = copy.deepcopy(piece)
                changed["endpoints"] = kept
                changed["metadata"]["labels"] = labels
                by_name[name] = changed
                to_update.append(name)
            elif is_relabelled:
                changed = copy.deepcopy(piece)
                changed["metadata"]["labels"] = labels
                by_name[name] = changed
                to_update.append(name)
            else:
                unchanged.append(name)
        queue = list(wanted.values())
        # Fill the slices being updated anyway, the fullest first.
        for name in sorted(to_update, key=lambda n: -len(by_name[n]["endpoints"] or [])):
            piece = by_name[name]
            piece["endpoints"] = list(piece["endpoints"] or [])
            while queue and len(piece["endpoints"]) < self.max_endpoints:
                piece["endpoints"].append(queue.pop(0))
        create: list[Object] = []
        while queue:
            fill: Object | None = None
            if len(queue) < self.max_endpoints and unchanged:
                fill = self._slice_to_fill([by_name[n] for n in unchanged], len(queue))
            if fill is None:
                fill = new_slice(service, ports, family)
            else:
                fill = copy.deepcopy(fill)
                fill["endpoints"] = list(fill.get("endpoints") or [])
                by_name[fill["metadata"]["name"]] = fill
            while queue and len(fill["endpoints"]) < self.max_endpoints:
                fill["endpoints"].append(queue.pop(0))
            name = fill["metadata"].get("name")
            if name:
                to_update.append(name)
                unchanged.remove(name)
            else:
                create.append(fill)
        return (create, [by_name[n] for n in to_update], [by_name[n] for n in to_delete])

    def _slice_to_fill(self, pieces: list[Object], count: int) -> Object | None:
        """The unchanged slice closest to full once ``count`` endpoints are added."""
        best, best_room = None, self.max_endpoints
        for piece in pieces:
            room = self.max_endpoints - (count + len(piece.get("endpoints") or []))
            if 0 <= room < best_room:
                best, best_room = piece, room
                if room == 0:
                    break
        return best

    def _finalize(self, service: Object, create: list[Object], update: list[Object],
                  delete: list[Object]) -> None:
        """Upstream's finalize: creates paired with deletes become updates of those slices."""
        index = 0
        while index < len(delete) and create:
            doomed, piece = delete[index], create[-1]
            if doomed.get("addressType") == piece.get("addressType") and _owned_by(doomed,
                                                                                   service):
                piece["metadata"]["name"] = doomed["metadata"]["name"]
                create.pop()
                update.append(piece)
                delete.pop(index)
            else:
                index += 1
        namespace = service["metadata"]["namespace"]
        if not service["metadata"].get("deletionTimestamp"):
            for piece in create:
                try:
                    self._store.create(registry.ENDPOINT_SLICES, namespace, _as_served(piece))
                except errors.ApiError as error:
                    if error.code == 403:
                        return  # the namespace is terminating
                    raise
        for piece in update:
            body = _as_served(piece)
            body["metadata"].pop("resourceVersion", None)
            self._store.replace(registry.ENDPOINT_SLICES, namespace, piece["metadata"]["name"],
                                body)
        for piece in delete:
            try:
                self._store.delete(registry.ENDPOINT_SLICES, namespace, piece["metadata"]["name"])
            except errors.ApiError as error:
                if error.code != 404:
                    raise


# -- endpoints and slices -----------------------------------------------------------------

def _may_change_endpoints(event: store.Event) -> bool:
    """Whether a pod event can change any slice (upstream's podEndpointsChanged, plus: a pod
    that has no IP, before and after, is in no slice)."""
    pods = [p for p in (event.object, event.previous) if p is not None]
    if not any(_pod_ips(p) for p in pods):
        return False
    if event.type != "MODIFIED" or event.previous is None:
        return True
    old, new = event.previous, event.object

    def seen(pod: Object) -> tuple[Any, ...]:
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        return (_labels(pod), pod["metadata"].get("deletionTimestamp"), is_pod_ready(pod),
                _pod_ips(pod), status.get("phase") in ("Succeeded", "Failed"),
                spec.get("hostname"), spec.get("subdomain"), spec.get("nodeName"))

    return seen(old) != seen(new)


def _should_be_endpoint(pod: Object) -> bool:
    """Upstream's ShouldPodBeInEndpoints with terminating pods included."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    return bool(status.get("podIP") or status.get("podIPs"))


def is_pod_ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_ips(pod: Object) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """status.podIPs (or podIP, which the API server mirrors into it), parsed."""
    status = pod.get("status") or {}
    texts = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    texts = [t for t in texts if t] or [status.get("podIP")]
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for text in texts:
        try:
            found.append(ipaddress.ip_address(str(text)))
        except ValueError:
            continue
    return found


def pod_endpoint(pod: Object, node: Object | None, service: Object, family: str) -> Object:
    """Upstream's podToEndpoint, as the API serves it."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    serving = is_pod_ready(pod)
    terminating = bool(meta.get("deletionTimestamp"))
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    version = 6 if family == "IPv6" else 4
    addresses = [str(ip) for ip in _pod_ips(pod) if ip.version == version]
    endpoint: Object = {
        "addresses": addresses,
        "conditions": {"ready": publish or (serving and not terminating), "serving": serving,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                      "uid": meta["uid"]},
    }
    if spec.get("nodeName"):
        endpoint["nodeName"] = spec["nodeName"]
    zone = _labels(node).get(ZONE)
    if zone:
        endpoint["zone"] = zone
    if (spec.get("hostname") and spec.get("subdomain") == service["metadata"]["name"]
            and meta["namespace"] == service["metadata"]["namespace"]):
        endpoint["hostname"] = spec["hostname"]
    return endpoint


def find_port(pod: Object, service_port: dict[str, Any]) -> int | None:
    """Upstream's FindPort: the pod's port for a Service port, or None."""
    target = service_port.get("targetPort")
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if not isinstance(target, str):
        return None
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in [*(spec.get("containers") or []), *sidecars]:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if (port.get("name") == target and (port.get("protocol") or "TCP") == protocol
                    and isinstance(number, int)):
                return number
    return None


def endpoint_ports(service: Object, pod: Object) -> list[dict[str, Any]]:
    """The slice ports of one pod for a Service (upstream's getEndpointPorts)."""
    ports: list[dict[str, Any]] = []
    for service_port in (service.get("spec") or {}).get("ports") or []:
        number = find_port(pod, service_port)
        if number is None:
            continue
        port = {"name": service_port.get("name") or "", "protocol":
                service_port.get("protocol") or "TCP", "port": number}
        if service_port.get("appProtocol"):
            port["appProtocol"] = service_port["appProtocol"]
        ports.append(port)
    return ports


def _port_key(ports: list[dict[str, Any]] | None) -> str:
    return json.dumps(sorted(json.dumps(p, sort_keys=True) for p in ports or []))


def _endpoint_key(endpoint: Object) -> tuple[Any, ...]:
    """What upstream hashes an endpoint by: addresses, hostname and the target's name."""
    ref = endpoint.get("targetRef") or {}
    return (tuple(sorted(endpoint.get("addresses") or [])), endpoint.get("hostname") or "",
            ref.get("namespace") or "", ref.get("name") or "")


def _same_beyond_key(one: Object, other: Object) -> bool:
    """Upstream's EndpointsEqualBeyondHash."""
    refs = [{k: v for k, v in (e.get("targetRef") or {}).items() if k != "resourceVersion"}
            for e in (one, other)]
    return (refs[0] == refs[1]
            and all(one.get(f) == other.get(f) for f in ("nodeName", "zone"))
            and all((one.get("conditions") or {}).get(c) == (other.get("conditions") or {}).get(c)
                    for c in ("ready", "serving", "terminating")))


def _owned_by(piece: Object, service: Object) -> bool:
    return any(ref.get("uid") == service["metadata"]["uid"] and ref.get("kind") == "Service"
               and ref.get("apiVersion") == "v1"
               for ref in piece["metadata"].get("ownerReferences") or [])


def _address_types(spec: dict[str, Any]) -> set[str]:
    """Upstream's getAddressTypesForService."""
    found = {f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")}
    if found:
        return found
    cluster_ip = spec.get("clusterIP")
    if cluster_ip and cluster_ip != "None":
        try:
            return {f"IPv{ipaddress.ip_address(cluster_ip).version}"}
        except ValueError:
            return {"IPv4"}
    return {"IPv4", "IPv6"}


def slice_labels(piece: Object, service: Object) -> tuple[dict[str, str], bool]:
    """The labels a slice of ``service`` should carry, and whether its own (but the
    controller's) differ from the Service's."""
    mine = {k: v for k, v in _labels(piece).items() if k not in _RESERVED}
    wanted = {k: v for k, v in _labels(service).items() if k not in _RESERVED}
    is_changed = mine != wanted
    cluster_ip = (service.get("spec") or {}).get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        wanted[HEADLESS] = ""
    wanted[SERVICE_NAME] = service["metadata"]["name"]
    wanted[MANAGED_BY] = CONTROLLER
    return wanted, is_changed


def new_slice(service: Object, ports: list[dict[str, Any]], family: str) -> Object:
    """A slice to create (upstream's newEndpointSlice); its name comes from generateName."""
    meta = service["metadata"]
    labels, _ = slice_labels({"metadata": {}}, service)
    return {"metadata": {"generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                         "labels": labels,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                              "name": meta["name"], "uid": meta["uid"],
                                              "controller": True,
                                              "blockOwnerDeletion": True}]},
            "addressType": family, "endpoints": [], "ports": copy.deepcopy(ports)}


def _same_placeholder(piece: Object, placeholder: Object) -> bool:
    """Upstream's placeholderSliceCompare: namespace, labels, owners and content."""
    meta, other = piece["metadata"], placeholder["metadata"]
    return (meta.get("namespace") == other.get("namespace")
            and _labels(piece) == _labels(placeholder)
            and (meta.get("ownerReferences") or []) == other["ownerReferences"]
            and piece.get("addressType") == placeholder["addressType"]
            and not piece.get("endpoints") and not piece.get("ports"))


def _as_served(piece: Object) -> Object:
    """What the API server stores: empty lists come back as null (protobuf drops them)."""
    body = copy.deepcopy(piece)
    body["apiVersion"], body["kind"] = (registry.ENDPOINT_SLICES.api_version,
                                        registry.ENDPOINT_SLICES.kind)
    body["endpoints"] = body.get("endpoints") or None
    body["ports"] = body.get("ports") or None
    return body
