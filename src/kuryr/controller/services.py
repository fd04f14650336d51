"""Services and EndpointSlices: a Service's KuryrLoadBalancer, its spec kept current.

A Service that gets a load balancer (ClusterIP or LoadBalancer, with a clusterIP: not
headless, not ExternalName) gets a KuryrLoadBalancer of the same name (finalizer,
ownerReference to the Service) whose spec is upstream's: ``ip`` (the clusterIP), ``ports``
(name, port, protocol, targetPort), ``endpointSlices`` (every slice labelled
``kubernetes.io/service-name`` with the Service's name, merged), ``project_id``,
``subnet_id`` (``[kubernetes] service_subnet``), ``type``, ``provider``, ``lb_ip``
(``loadBalancerIP``), the timeouts, and kuryr's own ``sessionAffinity``,
``sessionAffinityTimeoutSeconds`` and ``loadBalancerSourceRanges``. A Service that stops
qualifying has its KuryrLoadBalancer deleted. The Octavia side is ``loadbalancers``.
"""

from __future__ import annotations

import logging
from typing import Any

from kuryr import errors
from kuryr.controller import context, placing
from kuryr.k8s import api, resources
from kuryr.neutron import resources as neutron_resources

LOG = logging.getLogger(__name__)
# Annotations (upstream's names) that override [octavia_defaults] per Service.
TIMEOUT_CLIENT_ANNOTATION = "openstack.org/kuryr-timeout-client-data"
TIMEOUT_MEMBER_ANNOTATION = "openstack.org/kuryr-timeout-member-data"
LB_TYPES = ("ClusterIP", "LoadBalancer", "NodePort")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: Kubernetes' default for ClientIP


def is_load_balanced(service: api.Object) -> bool:
    """Whether a Service gets a load balancer: it has a clusterIP (not headless) and is not
    ExternalName."""
    spec = service.get("spec") or {}
    cluster_ip = spec.get("clusterIP")
    return (spec.get("type", "ClusterIP") in LB_TYPES and bool(cluster_ip)
            and cluster_ip != "None" and not service["metadata"].get("deletionTimestamp"))


def slices_of(ctx: context.Context, namespace: str, name: str) -> list[api.Object]:
    """The Service's EndpointSlices, in a stable order."""
    found = [s for s in ctx.informers["endpointslices"].in_namespace(namespace)
             if ((s["metadata"].get("labels") or {}).get(resources.SERVICE_NAME_LABEL)
                 == name)]
    return sorted(found, key=lambda s: str(s["metadata"]["name"]))


async def handle_service(ctx: context.Context, namespace: str, name: str) -> float | None:
    """Create, update or delete the Service's KuryrLoadBalancer."""
    service = ctx.cached("services", namespace, name)
    klb = ctx.cached("kuryrloadbalancers", namespace, name)
    if service is None or not is_load_balanced(service):
        if klb is not None and not klb["metadata"].get("deletionTimestamp"):
            await ctx.kube.delete(resources.KURYR_LOAD_BALANCERS, namespace, name)
        return None
    if not ctx.config.kubernetes.service_subnet:
        return None  # Services are not kuryr's business in this deployment
    meta = service["metadata"]
    if klb is not None and owner_uid(klb) != meta["uid"]:
        # The load balancer of an earlier Service of the same name: it goes first.
        if not klb["metadata"].get("deletionTimestamp"):
            await ctx.kube.delete(resources.KURYR_LOAD_BALANCERS, namespace, name)
        raise errors.TemporaryError(
            f"service {namespace}/{name}: the load balancer of its predecessor is being "
            "released", delay=1.0)
    ctx.services_seen.setdefault(meta["uid"], ctx.clock())
    spec = await build_spec(ctx, service)
    if klb is None:
        await ctx.kube.create(resources.KURYR_LOAD_BALANCERS, namespace, {
            "metadata": {"name": name, "namespace": namespace,
                         "finalizers": [context.LOADBALANCER_FINALIZER],
                         "labels": {resources.SERVICE_NAME_LABEL: name},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                              "name": name, "uid": meta["uid"],
                                              "blockOwnerDeletion": True}]},
            "spec": spec})
        LOG.info("service %s/%s: KuryrLoadBalancer created", namespace, name)
    elif klb.get("spec") != spec:
        await ctx.kube.replace(resources.KURYR_LOAD_BALANCERS, namespace, name,
                               {"metadata": klb["metadata"], "spec": spec,
                                **({"status": klb["status"]} if "status" in klb else {})})
    return None


def owner_uid(klb: api.Object) -> str | None:
    for ref in klb["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Service":
            return str(ref["uid"])
    return None


async def build_spec(ctx: context.Context, service: api.Object) -> dict[str, Any]:
    """The KuryrLoadBalancer spec of a Service. Raises NotFoundError (no service subnet),
    TemporaryError."""
    meta, spec = service["metadata"], service.get("spec") or {}
    subnet = await service_subnet(ctx)
    octavia = ctx.config.octavia
    annotations = meta.get("annotations") or {}
    namespace = ctx.cached("namespaces", None, meta["namespace"])
    project_id = placing.project_of(ctx, namespace) or subnet.project_id
    ports = [{"name": p.get("name") or "", "port": int(p["port"]),
              "protocol": p.get("protocol") or "TCP",
              "targetPort": str(p.get("targetPort", p["port"]))}
             for p in spec.get("ports") or []]
    slices = [{"endpoints": [_endpoint(e) for e in s.get("endpoints") or []],
               "ports": [{"name": p.get("name") or "", "port": p.get("port"),
                          "protocol": p.get("protocol") or "TCP"}
                         for p in s.get("ports") or []]}
              for s in slices_of(ctx, meta["namespace"], meta["name"])
              if s.get("addressType", "IPv4") == _address_type(spec["clusterIP"])]
    affinity = spec.get("sessionAffinity") or "None"
    timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
        "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
    result: dict[str, Any] = {
        "ip": spec["clusterIP"], "ports": ports, "endpointSlices": slices,
        "project_id": project_id, "subnet_id": subnet.id, "security_groups_ids": [],
        "type": spec.get("type", "ClusterIP"), "provider": octavia.provider,
        "timeout_client_data": _int(annotations.get(TIMEOUT_CLIENT_ANNOTATION),
                                    octavia.timeout_client_data),
        "timeout_member_data": _int(annotations.get(TIMEOUT_MEMBER_ANNOTATION),
                                    octavia.timeout_member_data),
        "sessionAffinity": affinity,
    }
    if affinity == "ClientIP":
        result["sessionAffinityTimeoutSeconds"] = int(timeout)
    if spec.get("loadBalancerIP"):
        result["lb_ip"] = spec["loadBalancerIP"]
    if spec.get("loadBalancerSourceRanges"):
        result["loadBalancerSourceRanges"] = list(spec["loadBalancerSourceRanges"])
    return result


def _endpoint(endpoint: dict[str, Any]) -> dict[str, Any]:
    conditions = endpoint.get("conditions") or {}
    ready = conditions.get("ready")
    out: dict[str, Any] = {
        "addresses": list(endpoint.get("addresses") or []),
        # Kubernetes: an unknown ready condition is to be read as ready.
        "conditions": {"ready": ready is not False,
                       "serving": conditions.get("serving", ready) is not False,
                       "terminating": bool(conditions.get("terminating"))}}
    ref = endpoint.get("targetRef")
    if ref:
        out["targetRef"] = {k: ref[k] for k in ("kind", "name", "namespace", "uid") if k in ref}
    return out


def _address_type(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


async def service_subnet(ctx: context.Context) -> neutron_resources.Subnet:
    """``[kubernetes] service_subnet``, looked up once per term. Raises NotFoundError,
    TemporaryError."""
    if ctx.service_subnet is None:
        ctx.service_subnet = await ctx.neutron.get_subnet(
            ctx.config.kubernetes.service_subnet or "")
    return ctx.service_subnet
