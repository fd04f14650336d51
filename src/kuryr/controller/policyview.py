"""The cluster as NetworkPolicy translation sees it (``policyspec.View``), built from the
controller's informer caches: every pod with its addresses (from its KuryrPort's VIF, known
before the pod's CNI ADD answers; else the pod status), namespace labels, the Services' load
balancer specs and the nodes' InternalIP addresses."""

from __future__ import annotations

from kuryr.controller import context, policyspec, ports
from kuryr.k8s import api, selectors


def build(ctx: context.Context) -> policyspec.View:
    pods = [policyspec.pod_view(pod, addresses(ctx, pod))
            for pod in ctx.informers["pods"].objects.values() if ports.is_networked(pod)]
    namespaces = {str(n["metadata"]["name"]): selectors.namespace_labels(n)
                  for n in ctx.informers["namespaces"].objects.values()}
    balancers = [klb.get("spec") or {}
                 for klb in (ctx.informers["kuryrloadbalancers"].objects.values()
                             if "kuryrloadbalancers" in ctx.informers else ())
                 if not klb["metadata"].get("deletionTimestamp")]
    nodes = {str(a["address"]) for node in ctx.informers["nodes"].objects.values()
             for a in (node.get("status") or {}).get("addresses") or []
             if a.get("type") == "InternalIP" and a.get("address")}
    return policyspec.View(pods, namespaces, balancers, nodes)


def addresses(ctx: context.Context, pod: api.Object) -> tuple[str, ...]:
    """The pod's IP addresses: its VIF's, else its status'."""
    meta = pod["metadata"]
    kuryr_port = ctx.cached("kuryrports", meta["namespace"], meta["name"])
    vif = (((kuryr_port or {}).get("status") or {}).get("vifs") or {}).get(
        ports.IFNAME, {}).get("vif")
    if isinstance(vif, dict) and vif.get("fixed_ips"):
        return tuple(str(f["address"]).split("/")[0] for f in vif["fixed_ips"])
    status = pod.get("status") or {}
    found = [str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip")]
    return tuple(found or ([str(status["podIP"])] if status.get("podIP") else []))
