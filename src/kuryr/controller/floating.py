"""Floating IPs of type=LoadBalancer Services, on their load balancer's VIP port.

A Service whose ``loadBalancerIP`` names an existing floating IP gets that one associated
(``alloc_method: user``; on release it is only disassociated). Otherwise kuryr allocates one
from ``[kubernetes] external_svc_net``, tagged with the Service's UID so that it is found
again after a restart and never allocated twice (``alloc_method: kuryr``; released with the
Service). What was done is recorded in the KuryrLoadBalancer status as upstream's
``service_pub_ip_info {ip_id, ip_addr, alloc_method}``.
"""

from __future__ import annotations

import logging
from typing import Any

from kuryr import errors
from kuryr.controller import context
from kuryr.k8s import api
from kuryr.octavia import resources as octavia_resources

LOG = logging.getLogger(__name__)
USER = "user"
KURYR = "kuryr"


async def ensure(ctx: context.Context, klb: api.Object, lb: octavia_resources.LoadBalancer,
                 uid: str) -> dict[str, Any] | None:
    """The floating IP the KuryrLoadBalancer should have (None: not a LoadBalancer
    Service; one it had is released). Raises ConfigError, PermanentError (a loadBalancerIP
    that is not a floating IP, or is someone else's), TemporaryError."""
    spec = klb.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        await release(ctx, klb, uid)
        return None
    neutron = ctx.neutron
    requested = spec.get("lb_ip")
    recorded = (klb.get("status") or {}).get("service_pub_ip_info") or {}
    if recorded and requested and recorded.get("ip_addr") != requested:
        await release(ctx, klb, uid)  # the user asked for another address
    if requested:
        fip = await neutron.find_floating_ip(requested)
        if fip is None:
            raise errors.PermanentError(
                f"loadBalancerIP {requested} is not a floating IP: allocate it first, or "
                "leave loadBalancerIP out to have kuryr allocate one")
        if fip.port_id not in (None, lb.vip_port_id):
            raise errors.PermanentError(
                f"floating IP {requested} is in use by port {fip.port_id}")
        method = KURYR if context.service_tag(uid) in fip.tags else USER
    else:
        network = ctx.config.kubernetes.external_svc_net
        if not network:
            raise errors.ConfigError(
                "type=LoadBalancer Services need [kubernetes] external_svc_net (the external "
                "network floating IPs come from)")
        found = await neutron.list_floating_ips(
            tags=[*neutron.base_tags, context.service_tag(uid)])
        for extra in found[1:]:
            await neutron.delete_floating_ip(extra.id)
        if found:
            fip = found[0]
        else:
            external = await neutron.get_network(network)
            fip = await neutron.create_floating_ip(
                external.id, port_id=lb.vip_port_id, project_id=lb.project_id or None,
                tags=[context.service_tag(uid)],
                description=f"kuryr: Service {klb['metadata']['namespace']}/"
                            f"{klb['metadata']['name']}")
            LOG.info("service %s/%s: floating IP %s", klb["metadata"]["namespace"],
                     klb["metadata"]["name"], fip.floating_ip_address)
        method = KURYR
    if fip.port_id != lb.vip_port_id:
        fip = await neutron.update_floating_ip(fip.id, port_id=lb.vip_port_id)
    return {"ip_id": fip.id, "ip_addr": fip.floating_ip_address, "alloc_method": method}


async def release(ctx: context.Context, klb: api.Object, uid: str) -> None:
    """Release the Service's floating IPs: delete those kuryr allocated, disassociate the
    user's. Idempotent."""
    neutron = ctx.neutron
    for fip in await neutron.list_floating_ips(
            tags=[*neutron.base_tags, context.service_tag(uid)]):
        await neutron.delete_floating_ip(fip.id)
    recorded = (klb.get("status") or {}).get("service_pub_ip_info") or {}
    if recorded.get("alloc_method") == USER and recorded.get("ip_id"):
        try:
            fip = await neutron.get_floating_ip(str(recorded["ip_id"]))
        except errors.NotFoundError:
            return
        lb_port = ((klb.get("status") or {}).get("loadbalancer") or {}).get("port_id")
        if fip.port_id is not None and fip.port_id == lb_port:
            await neutron.update_floating_ip(fip.id, port_id=None)
