"""The upstream e2e ``netpol`` layout as data: namespaces x, y, z, pods a, b, c in each
(labelled ``pod: <name>``), every pod serving TCP and UDP on ports 80 and 81 through named
container ports ``serve-<port>-<protocol>``.

This module says what the pods are, not how they come to be: controller tests create them
through the Kubernetes API double and the CNI harness, the Linux tests in bare network
namespaces; either way the prober is then given each pod's network namespace and IP.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 81)
PROTOCOLS = ("TCP", "UDP")
POD_LABEL = "pod"


def port_name(port: int, protocol: str) -> str:
    """``serve-80-tcp``: the container port name for a port and protocol."""
    return f"serve-{port}-{protocol.lower()}"


def container_ports(ports: Iterable[int] = PORTS,
                    protocols: Iterable[str] = PROTOCOLS) -> list[dict[str, Any]]:
    """The named container ports of one pod, as in ``spec.containers[].ports``."""
    return [{"name": port_name(port, protocol), "containerPort": port, "protocol": protocol}
            for port, protocol in itertools.product(ports, protocols)]


def key(namespace: str, name: str) -> str:
    """``x/a``: how matrices name a pod."""
    return f"{namespace}/{name}"


def namespace_spec(name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Namespace object (the ``kubernetes.io/metadata.name`` label is the API server's to
    add)."""
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def pod_spec(namespace: str, name: str, *, labels: Mapping[str, str] | None = None,
             ports: Iterable[int] = PORTS, protocols: Iterable[str] = PROTOCOLS,
             ip: str | None = None) -> dict[str, Any]:
    """A Pod object of the layout: labelled ``pod: <name>`` (plus ``labels``), one container
    whose ports are ``container_ports``; with ``ip``, a status carrying it as the kubelet
    writes it."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {POD_LABEL: name, **(labels or {})}},
        "spec": {"containers": [{"name": "c", "image": "i",
                                 "ports": container_ports(ports, protocols)}]}}
    return with_ip(pod, ip) if ip else pod


def with_ip(pod: Mapping[str, Any], ip: str) -> dict[str, Any]:
    """A copy of ``pod`` whose status carries ``ip`` (``podIP`` and ``podIPs``)."""
    made = copy.deepcopy(dict(pod))
    status = made.setdefault("status", {})
    status["podIP"] = ip
    status["podIPs"] = [{"ip": ip}]
    return made


@dataclasses.dataclass(frozen=True)
class Layout:
    """Namespaces x pods, each pod serving ``ports`` x ``protocols``."""

    namespaces: tuple[str, ...] = NAMESPACES
    pods: tuple[str, ...] = PODS
    ports: tuple[int, ...] = PORTS
    protocols: tuple[str, ...] = PROTOCOLS

    def keys(self) -> list[str]:
        """Every pod as ``namespace/name``, namespace by namespace."""
        return [key(ns, name) for ns in self.namespaces for name in self.pods]

    def cases(self) -> list[tuple[int, str]]:
        """Every (port, protocol) the pods serve."""
        return list(itertools.product(self.ports, self.protocols))

    def namespace_specs(self) -> list[dict[str, Any]]:
        return [namespace_spec(ns) for ns in self.namespaces]

    def pod_specs(self, ips: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every pod's object; ``ips`` (by ``namespace/name``) puts addresses in their
        status."""
        return [pod_spec(ns, name, ports=self.ports, protocols=self.protocols,
                         ip=(ips or {}).get(key(ns, name)))
                for ns in self.namespaces for name in self.pods]
