"""Services in the Kubernetes API double: what kube-apiserver's Service storage does to a
Service on every write, run as a store admission (``Store.admit``), so it holds for writes over
HTTP and straight to the store alike.

It owns Service defaulting (``type`` ClusterIP, ``sessionAffinity`` None, a ClientIP
affinity's 10800 s timeout, ``internalTrafficPolicy`` Cluster, ``externalTrafficPolicy``
Cluster for NodePort and LoadBalancer, ports' ``protocol`` TCP and ``targetPort`` = ``port``,
``ipFamilies`` / ``ipFamilyPolicy``, ``status.loadBalancer`` {} on create, ``ipMode`` VIP on
load-balancer ingress IPs), the validation of those fields (422 Invalid, worded as kube words
it), and ClusterIP allocation from the service CIDR: a Service without ``spec.clusterIP`` gets
the first free address (not the network address, nor the first one, which kube-apiserver gives
to the ``kubernetes`` Service, nor IPv4's broadcast); a requested one must be in the range and
free; headless (``None``) and ExternalName Services get none; ``spec.clusterIPs`` mirrors
``spec.clusterIP``; an update that omits the clusterIP keeps it, one that changes it is refused,
a switch to ExternalName drops it. Allocation is derived from the stored Services, so deleting
a Service frees its address (once it is really gone, not while finalizers hold it). Without a
CIDR nothing is allocated (a given clusterIP is taken as is).

Not done: nodePort allocation, dual stack, loadBalancerClass, externalIPs checks.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from tests.support.k8s import errors, registry, store

TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
AFFINITIES = ("ClientIP", "None")
HEADLESS = "None"  # the clusterIP of a headless Service
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, kube's default for ClientIP affinity
MAX_AFFINITY_TIMEOUT = 86400
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME

Cause = dict[str, str]


def _go(value: Any) -> str:
    """A value as Go's %#v shows it in kube's messages."""
    if isinstance(value, list):
        return "[]string{" + ", ".join(json.dumps(str(v)) for v in value) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value)


def _cause(reason: str, field: str, message: str) -> Cause:
    return {"reason": reason, "field": field, "message": message}


def _invalid(field: str, value: Any, detail: str) -> Cause:
    return _cause("FieldValueInvalid", field, f"Invalid value: {_go(value)}: {detail}")


def _required(field: str) -> Cause:
    return _cause("FieldValueRequired", field, "Required value")


def _unsupported(field: str, value: Any, supported: tuple[str, ...]) -> Cause:
    listed = ", ".join(json.dumps(s) for s in supported)
    return _cause("FieldValueNotSupported", field,
                  f"Unsupported value: {_go(value)}: supported values: {listed}")


def invalid(kind: str, name: str, causes: list[Cause]) -> errors.ApiError:
    """The 422 kube-apiserver answers for a refused object, with its causes in details."""
    said = [f"{c['field']}: {c['message']}" for c in causes]
    text = said[0] if len(said) == 1 else "[" + ", ".join(said) + "]"
    return errors.ApiError(422, f'{kind} "{name}" is invalid: {text}',
                           details={"name": name, "kind": kind, "causes": causes})


def _needs_cluster_ip(spec: dict[str, Any]) -> bool:
    return spec.get("type") != "ExternalName"


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


class ServiceAdmission:
    """Defaulting, validation and ClusterIP allocation for the Services of one store."""

    def __init__(self, objects: store.Store, service_cidr: str | None = None) -> None:
        self._store = objects
        self.network = ipaddress.ip_network(service_cidr) if service_cidr else None

    def install(self) -> None:
        self._store.admit(self.admit)

    def admit(self, resource: registry.Resource, old: store.Object | None,
              new: store.Object) -> None:
        """The store admission: changes ``new`` in place, or raises ApiError 422 (500 when the
        range is full)."""
        if (resource.group, resource.plural) != ("", "services"):
            return
        meta = new["metadata"]
        if not isinstance(new.get("spec"), dict):
            new["spec"] = {}
        spec = new["spec"]
        old_spec = (old or {}).get("spec") or {}
        _default(spec)
        if old is not None:
            _carry_allocated(old_spec, spec)
        _mirror(spec)
        _default_families(spec, self.network)
        causes = _validate(spec)
        if old is not None:
            causes += _validate_update(old_spec, spec)
        if not causes:
            causes = self._allocate(meta, old_spec if old is not None else None, spec)
        if causes:
            raise invalid("Service", meta["name"], causes)
        if old is None:
            new["status"] = {"loadBalancer": {}}
        _default_status(new)

    # -- allocation -----------------------------------------------------------------------

    def taken(self, *, but: tuple[str, str] | None = None) -> set[str]:
        """The clusterIPs of the stored Services (but the one named (namespace, name))."""
        found: set[str] = set()
        for service in self._store.list(registry.SERVICES, None)[0]:
            meta = service["metadata"]
            if (meta.get("namespace") or "", meta["name"]) == but:
                continue
            spec = service.get("spec") or {}
            for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
                if ip and ip != HEADLESS:
                    found.add(str(ipaddress.ip_address(ip)))
        return found

    def _allocate(self, meta: dict[str, Any], old_spec: dict[str, Any] | None,
                  spec: dict[str, Any]) -> list[Cause]:
        if not _needs_cluster_ip(spec) or self.network is None:
            return []
        wanted = spec.get("clusterIP") or ""
        if wanted == HEADLESS or (old_spec is not None and wanted
                                  and wanted == old_spec.get("clusterIP")):
            return []  # headless, or the address it already holds
        taken = self.taken(but=(str(meta.get("namespace") or ""), str(meta["name"])))
        if not wanted:
            address = self._first_free(taken)
            if address is None:
                raise errors.ApiError(500, "Internal error occurred: failed to allocate a "
                                      "serviceIP: range is full")
            spec["clusterIP"], spec["clusterIPs"] = address, [address]
            return []
        ip = ipaddress.ip_address(wanted)
        if not self._in_range(ip):
            return [_invalid("spec.clusterIPs", [wanted], f"failed to allocate IP {wanted}: "
                             f"the provided IP ({wanted}) is not in the valid range. The range "
                             f"of valid IPs is {self.network}")]
        if str(ip) in taken:
            return [_invalid("spec.clusterIPs", [wanted], f"failed to allocate IP {wanted}: "
                             "provided IP is already allocated")]
        return []

    def _in_range(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        network = self.network
        assert network is not None
        if ip.version != network.version or ip not in network or ip == network.network_address:
            return False
        return not (network.version == 4 and network.num_addresses > 2
                    and ip == network.broadcast_address)

    def _first_free(self, taken: set[str]) -> str | None:
        assert self.network is not None
        hosts = self.network.hosts()
        next(hosts, None)  # the first address is the kubernetes Service's
        return next((str(ip) for ip in hosts if str(ip) not in taken), None)


# -- defaulting ---------------------------------------------------------------------------

def _default(spec: dict[str, Any]) -> None:
    """kube's SetDefaults_Service."""
    spec.setdefault("type", "ClusterIP")
    if not spec.get("sessionAffinity"):
        spec["sessionAffinity"] = "None"
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        client_ip = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        if client_ip.get("timeoutSeconds") is None:
            spec["sessionAffinityConfig"] = {
                "clientIP": {"timeoutSeconds": DEFAULT_AFFINITY_TIMEOUT}}
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if not port.get("protocol"):
            port["protocol"] = "TCP"
        if port.get("targetPort") in (None, 0, ""):
            port["targetPort"] = port.get("port")
    if spec["type"] in ("NodePort", "LoadBalancer") and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec["type"] in ("ClusterIP", "NodePort", "LoadBalancer"):
        spec.setdefault("internalTrafficPolicy", "Cluster")


def _carry_allocated(old_spec: dict[str, Any], spec: dict[str, Any]) -> None:
    """An update keeps what was allocated when it leaves it out, and a switch to ExternalName
    drops it when left unchanged (kube's patchAllocatedValues / dropTypeDependentFields)."""
    if not _needs_cluster_ip(old_spec):
        return
    if _needs_cluster_ip(spec):
        if not spec.get("clusterIP") and old_spec.get("clusterIP"):
            spec["clusterIP"] = old_spec["clusterIP"]
        if not spec.get("clusterIPs") and old_spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_spec["clusterIPs"])
        return
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if field in spec and spec[field] == old_spec.get(field):
            del spec[field]


def _mirror(spec: dict[str, Any]) -> None:
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    elif not spec.get("clusterIP") and spec.get("clusterIPs"):
        spec["clusterIP"] = spec["clusterIPs"][0]


def _default_families(spec: dict[str, Any],
                      network: ipaddress.IPv4Network | ipaddress.IPv6Network | None) -> None:
    if not _needs_cluster_ip(spec):
        return
    if not spec.get("ipFamilies"):
        family = network.version if network is not None else 4
        cluster_ip = spec.get("clusterIP")
        if cluster_ip and cluster_ip != HEADLESS and _is_ip(cluster_ip):
            family = ipaddress.ip_address(cluster_ip).version
        spec["ipFamilies"] = [f"IPv{family}"]
    if not spec.get("ipFamilyPolicy"):
        headless_without_selector = (spec.get("clusterIP") == HEADLESS
                                     and not spec.get("selector"))
        spec["ipFamilyPolicy"] = "RequireDualStack" if headless_without_selector \
            else "SingleStack"


def _default_status(service: store.Object) -> None:
    """LoadBalancerIPMode (on by default from 1.30): an ingress IP gets ``ipMode`` VIP."""
    if (service.get("spec") or {}).get("type") != "LoadBalancer":
        return
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get(
            "ingress") or []:
        if isinstance(ingress, dict) and ingress.get("ip") and not ingress.get("ipMode"):
            ingress["ipMode"] = "VIP"


# -- validation ---------------------------------------------------------------------------

def _is_ip(text: Any) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _validate(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    kind = spec.get("type")
    if kind not in TYPES:
        causes.append(_unsupported("spec.type", kind, TYPES))
    if spec.get("sessionAffinity") not in AFFINITIES:
        causes.append(_unsupported("spec.sessionAffinity", spec.get("sessionAffinity"),
                                   AFFINITIES))
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds")
    if timeout is not None and not (isinstance(timeout, int)
                                    and 0 < timeout <= MAX_AFFINITY_TIMEOUT):
        causes.append(_invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                               f"must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT}"))
    cluster_ip = spec.get("clusterIP") or ""
    if kind == "ExternalName":
        if cluster_ip:
            causes.append(_cause("FieldValueForbidden", "spec.clusterIPs",
                                 "Forbidden: may not be set for ExternalName services"))
        if not spec.get("externalName"):
            causes.append(_required("spec.externalName"))
    elif cluster_ip and cluster_ip != HEADLESS and not _is_ip(cluster_ip):
        causes.append(_invalid("spec.clusterIPs[0]", cluster_ip, "must be a valid IP address, "
                               "(e.g. 10.9.8.7 or 2001:db8::ffff)"))
    ips = spec.get("clusterIPs") or []
    if ips and cluster_ip and ips[0] != cluster_ip:
        causes.append(_invalid("spec.clusterIPs", ips, "first value must match `clusterIP`"))
    return causes + _validate_ports(spec)


def _validate_ports(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        return [_invalid("spec.ports", ports, "must be a list")]
    if not ports and spec.get("type") != "ExternalName" and spec.get("clusterIP") != HEADLESS:
        causes.append(_required("spec.ports"))
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports):
        field = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            causes.append(_invalid(field, port, "must be an object"))
            continue
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            causes.append(_required(f"{field}.name"))
        elif name and name in names:
            causes.append(_cause("FieldValueDuplicate", f"{field}.name",
                                 f"Duplicate value: {_go(name)}"))
        names.add(name)
        if not _is_port(port.get("port")):
            causes.append(_invalid(f"{field}.port", port.get("port"),
                                   "must be between 1 and 65535, inclusive"))
        if port.get("protocol") not in PROTOCOLS:
            causes.append(_unsupported(f"{field}.protocol", port.get("protocol"), PROTOCOLS))
        target = port.get("targetPort")
        if isinstance(target, str):
            if not _PORT_NAME.match(target) or "--" in target:
                causes.append(_invalid(f"{field}.targetPort", target,
                                       "must be no more than 15 characters, lowercase "
                                       "alphanumerics and '-', not starting, ending or "
                                       "doubling '-'"))
            elif not re.search("[a-z]", target):
                causes.append(_invalid(f"{field}.targetPort", target,
                                       "must contain at least one letter (a-z)"))
        elif not _is_port(target):
            causes.append(_invalid(f"{field}.targetPort", target,
                                   "must be between 1 and 65535, inclusive"))
        key = (port.get("port"), port.get("protocol"))
        if key in seen:
            causes.append(_cause("FieldValueDuplicate", field,
                                 f"Duplicate value: {_go(dict(port=key[0], protocol=key[1]))}"))
        seen.add(key)
    return causes


def _validate_update(old_spec: dict[str, Any], spec: dict[str, Any]) -> list[Cause]:
    """A clusterIP, once set, may not change (but to none when switching to ExternalName)."""
    before, after = old_spec.get("clusterIP"), spec.get("clusterIP")
    if (_needs_cluster_ip(old_spec) and _needs_cluster_ip(spec) and before
            and after != before):
        return [_invalid("spec.clusterIPs[0]", spec.get("clusterIPs") or [after or ""],
                         "may not change once set")]
    return []
