"""KuryrLoadBalancers: a Service's Octavia load balancer, listeners, pools and members.

One reconcile of a KuryrLoadBalancer (the reactor runs one at a time per object, so the
operations on one load balancer are serialised) makes Octavia match its spec:
- the load balancer, found by its owner tag (the Service's UID) before one is made, with the
  clusterIP as VIP on the service subnet; one in ERROR, or on another VIP, or whose pools hash
  with another algorithm (the OVN provider keeps one mode per load balancer), is deleted with
  everything on it and made again;
- one listener and pool per Service port and protocol, named after the Service; a port the
  Service no longer has loses its pool and listener; a listener or pool in ERROR is remade;
  ``sessionAffinity: ClientIP`` hashes by source address only (SOURCE_IP);
- the members of each pool (``members``), applied with one batch update per pool, only when
  they differ;
- for type=LoadBalancer, a floating IP on the VIP port (``floating``);
- the status (upstream's fields), and the Service's ``status.loadBalancer``.
After each change Octavia is waited for (bounded) until the load balancer is ACTIVE again:
a load balancer in PENDING_* takes no other change. A wait that runs out is a TemporaryError,
which the reactor backs off. Deletion releases the floating IP, then the load balancer
(cascade), then the finalizer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from kuryr import errors
from kuryr.controller import context, floating, members, services
from kuryr.k8s import api, resources
from kuryr.octavia import client as octavia_client
from kuryr.octavia import resources as octavia_resources

LOG = logging.getLogger(__name__)
CLIENT_IP_ALGORITHM = "SOURCE_IP"


async def handle_loadbalancer(ctx: context.Context, namespace: str,
                              name: str) -> float | None:
    klb = ctx.cached("kuryrloadbalancers", namespace, name)
    if klb is None or ctx.octavia is None:
        return None
    if klb["metadata"].get("deletionTimestamp"):
        await release(ctx, klb)
        return None
    uid = services.owner_uid(klb)
    if uid is None:
        raise errors.PermanentError(
            f"KuryrLoadBalancer {namespace}/{name} has no Service ownerReference")
    spec = klb.get("spec") or {}
    builder = _Builder(ctx, ctx.octavia, klb, uid)
    lb = await builder.ensure_load_balancer(spec)
    applied = await builder.ensure_listeners(lb, spec)
    pub = await floating.ensure(ctx, klb, lb, uid)
    await _write_status(ctx, klb, lb, applied, pub)
    seen = ctx.services_seen.pop(uid, None)
    if seen is not None and builder.changed:
        ctx.metrics.service_ready.observe(ctx.clock() - seen)
    return None


class _Builder:
    """One reconcile of one load balancer; ``changed`` tells whether it changed anything."""

    def __init__(self, ctx: context.Context, octavia: octavia_client.Octavia,
                 klb: api.Object, uid: str) -> None:
        self.ctx = ctx
        self.octavia = octavia
        self.meta = klb["metadata"]
        self.tags = [context.service_tag(uid)]
        self.title = f"{self.meta['namespace']}/{self.meta['name']}"
        self.changed = False
        self.timeout = ctx.config.octavia.provisioning_timeout

    async def settle(self, lb_id: str) -> octavia_resources.LoadBalancer:
        """Wait until the load balancer takes changes again; ERROR is PermanentError here
        (the next reconcile rebuilds it)."""
        lb = await self.octavia.wait_load_balancer(lb_id, timeout=self.timeout)
        if lb.provisioning_status == "ERROR":
            raise errors.TemporaryError(f"load balancer {self.title} went to ERROR; it will "
                                        "be rebuilt", delay=1.0)
        return lb

    def algorithm(self, spec: dict[str, Any]) -> str:
        # The OVN provider hashes every pool of one load balancer the same way, and Octavia
        # takes a persistence timeout on UDP pools only: ClientIP affinity is the SOURCE_IP
        # algorithm for the whole load balancer (a change of affinity rebuilds it).
        if spec.get("sessionAffinity") == "ClientIP":
            return CLIENT_IP_ALGORITHM
        return self.ctx.config.octavia.lb_algorithm

    async def rebuild(self, lb: octavia_resources.LoadBalancer, why: str) -> None:
        LOG.warning("service %s: load balancer %s %s: deleting it to make it again",
                    self.title, lb.id, why)
        await self.octavia.delete_load_balancer(lb.id, cascade=True)
        await self.octavia.wait_load_balancer_deleted(lb.id, timeout=self.timeout)
        self.changed = True

    async def ensure_load_balancer(self, spec: dict[str, Any]
                                   ) -> octavia_resources.LoadBalancer:
        found = await self.octavia.list_load_balancers(
            tags=[*self.octavia.base_tags, *self.tags])
        for extra in found[1:]:  # never made by this code; a bug or a hand could
            await self.rebuild(extra, "is a duplicate")
        lb = found[0] if found else None
        if lb is not None and lb.provisioning_status.startswith("PENDING"):
            lb = await self.octavia.wait_load_balancer(lb.id, timeout=self.timeout)
        if lb is not None:
            why = None
            if lb.provisioning_status == "ERROR":
                why = "is in ERROR"
            elif lb.vip_address != spec.get("ip") or lb.vip_subnet_id != spec.get("subnet_id"):
                why = f"has VIP {lb.vip_address}, not {spec.get('ip')}"
            else:
                pools = await self.octavia.list_pools(loadbalancer_id=lb.id)
                wanted = self.algorithm(spec)
                if any(p.lb_algorithm != wanted for p in pools):
                    why = f"hashes by another algorithm than {wanted}"
            if why is not None:
                await self.rebuild(lb, why)
                lb = None
        if lb is None:
            lb = await self.octavia.create_load_balancer(
                self.title, vip_subnet_id=spec["subnet_id"], vip_address=spec["ip"],
                project_id=spec.get("project_id") or None,
                provider=spec.get("provider") or None, tags=self.tags,
                description=f"kuryr: Service {self.title}")
            self.changed = True
            LOG.info("service %s: load balancer %s, VIP %s", self.title, lb.id, lb.vip_address)
        return await self.settle(lb.id)

    async def ensure_listeners(self, lb: octavia_resources.LoadBalancer,
                               spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Listeners, pools and members as the spec says; returns what is applied, per port:
        {"listener": Listener, "pool": Pool, "members": [Member]}."""
        wanted = members.service_ports(spec)
        keys = {(p.protocol, p.port) for p in wanted}
        listeners = await self.octavia.list_listeners(loadbalancer_id=lb.id)
        pools = await self.octavia.list_pools(loadbalancer_id=lb.id)
        for listener in listeners:
            if ((listener.protocol, listener.protocol_port) not in keys
                    or listener.provisioning_status == "ERROR"):
                for pool in pools:
                    if pool.listener_id == listener.id:
                        await self.octavia.delete_pool(pool.id)
                        await self.settle(lb.id)
                await self.octavia.delete_listener(listener.id)
                await self.settle(lb.id)
                self.changed = True
        listeners = [ln for ln in listeners
                     if (ln.protocol, ln.protocol_port) in keys
                     and ln.provisioning_status != "ERROR"]
        pools = [p for p in pools if any(p.listener_id == ln.id for ln in listeners)]
        applied = []
        subnet_of = self._subnet_of()
        for port in wanted:
            listener = await self._ensure_listener(lb, port, listeners, spec)
            pool = await self._ensure_pool(lb, port, listener, pools, spec)
            applied.append({"port": port, "listener": listener, "pool": pool,
                            "members": await self._ensure_members(lb, port, pool, spec,
                                                                  subnet_of)})
        return applied

    async def _ensure_listener(self, lb: octavia_resources.LoadBalancer,
                               port: members.ServicePort,
                               listeners: list[octavia_resources.Listener],
                               spec: dict[str, Any]) -> octavia_resources.Listener:
        client_data = spec.get("timeout_client_data") or None
        member_data = spec.get("timeout_member_data") or None
        for listener in listeners:
            if (listener.protocol, listener.protocol_port) == (port.protocol, port.port):
                if ((client_data and listener.timeout_client_data != client_data)
                        or (member_data and listener.timeout_member_data != member_data)):
                    listener = await self.octavia.update_listener(
                        listener.id, timeout_client_data=client_data,
                        timeout_member_data=member_data)
                    await self.settle(lb.id)
                    self.changed = True
                return listener
        listener = await self.octavia.create_listener(
            lb.id, name=f"{self.title}:{port.label}", protocol=port.protocol,
            protocol_port=port.port, tags=self.tags, timeout_client_data=client_data,
            timeout_member_data=member_data)
        await self.settle(lb.id)
        self.changed = True
        return listener

    async def _ensure_pool(self, lb: octavia_resources.LoadBalancer, port: members.ServicePort,
                           listener: octavia_resources.Listener,
                           pools: list[octavia_resources.Pool],
                           spec: dict[str, Any]) -> octavia_resources.Pool:
        for pool in pools:
            if pool.listener_id != listener.id:
                continue
            if pool.provisioning_status != "ERROR":
                return pool
            await self.octavia.delete_pool(pool.id)
            await self.settle(lb.id)
        pool = await self.octavia.create_pool(
            listener_id=listener.id, name=f"{self.title}:{port.label}", protocol=port.protocol,
            lb_algorithm=self.algorithm(spec), tags=self.tags)
        await self.settle(lb.id)
        self.changed = True
        return pool

    async def _ensure_members(self, lb: octavia_resources.LoadBalancer,
                              port: members.ServicePort, pool: octavia_resources.Pool,
                              spec: dict[str, Any], subnet_of: Callable[[str], str | None]
                              ) -> list[octavia_resources.Member]:
        wanted = members.desired_members(spec, port, subnet_of=subnet_of)
        current = await self.octavia.list_members(pool.id)
        if members.same_members(current, wanted):
            return current
        await self.octavia.set_members(
            pool.id, [octavia_resources.MemberSpec(m.address, m.protocol_port, m.subnet_id,
                                                   m.name, tuple(self.tags)) for m in wanted])
        await self.settle(lb.id)
        self.changed = True
        LOG.info("service %s: %s members %s", self.title, port.label,
                 ", ".join(m.name for m in wanted) or "none")
        return await self.octavia.list_members(pool.id)

    def _subnet_of(self) -> Callable[[str], str | None]:
        """A member address's Neutron subnet, from the namespaces' KuryrNetworks (and the
        default pod subnet): no Neutron call. None: not a pod subnet kuryr knows."""
        known: list[tuple[Any, str]] = []
        for network in self.ctx.informers["kuryrnetworks"].objects.values():
            status = network.get("status") or {}
            if status.get("subnetCIDR") and status.get("subnetId"):
                known.append((ipaddress.ip_network(status["subnetCIDR"], strict=False),
                              str(status["subnetId"])))
        if self.ctx.default_subnet is not None:
            subnet = self.ctx.default_subnet
            known.append((ipaddress.ip_network(subnet.cidr, strict=False), subnet.id))

        def find(address: str) -> str | None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return None
            return next((subnet_id for net, subnet_id in known if ip in net), None)

        return find


async def _write_status(ctx: context.Context, klb: api.Object,
                        lb: octavia_resources.LoadBalancer, applied: list[dict[str, Any]],
                        pub: dict[str, Any] | None) -> None:
    status: dict[str, Any] = {
        "loadbalancer": {"id": lb.id, "ip": lb.vip_address, "name": lb.name,
                         "port_id": lb.vip_port_id, "project_id": lb.project_id,
                         "provider": lb.provider, "security_groups": [],
                         "subnet_id": lb.vip_subnet_id},
        "listeners": [{"id": a["listener"].id, "loadbalancer_id": lb.id,
                       "name": a["listener"].name, "port": a["listener"].protocol_port,
                       "protocol": a["listener"].protocol, "project_id": lb.project_id}
                      for a in applied],
        "pools": [{"id": a["pool"].id, "listener_id": a["listener"].id,
                   "loadbalancer_id": lb.id, "name": a["pool"].name,
                   "protocol": a["pool"].protocol, "project_id": lb.project_id}
                  for a in applied],
        "members": [{"id": m.id, "ip": m.address, "name": m.name, "pool_id": a["pool"].id,
                     "port": m.protocol_port, "project_id": lb.project_id,
                     "subnet_id": m.subnet_id}
                    for a in applied for m in a["members"]],
    }
    status["service_pub_ip_info"] = pub  # None: removed by the merge patch
    current = klb.get("status") or {}
    meta = klb["metadata"]
    if any(current.get(k) != v for k, v in status.items()) or current.get("conditions"):
        status["conditions"] = None
        await ctx.kube.patch(resources.KURYR_LOAD_BALANCERS, meta["namespace"], meta["name"],
                             {"status": status}, status=True)
    await _write_service_status(ctx, meta["namespace"], meta["name"], pub)


async def _write_service_status(ctx: context.Context, namespace: str, name: str,
                                pub: dict[str, Any] | None) -> None:
    service = ctx.cached("services", namespace, name)
    if service is None:
        return
    ingress = [{"ip": pub["ip_addr"]}] if pub is not None else []
    current = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    # The API server adds fields of its own (ipMode): compare the addresses only.
    if [i.get("ip") for i in current] != [i["ip"] for i in ingress]:
        with contextlib.suppress(errors.NotFoundError):
            await ctx.kube.patch(resources.SERVICES, namespace, name,
                                 {"status": {"loadBalancer": {"ingress": ingress or None}}},
                                 status=True)


async def release(ctx: context.Context, klb: api.Object) -> None:
    """Release a deleted KuryrLoadBalancer: floating IP, load balancer (cascade), then the
    finalizer."""
    meta = klb["metadata"]
    if context.LOADBALANCER_FINALIZER not in (meta.get("finalizers") or []):
        return
    octavia = ctx.octavia
    assert octavia is not None
    uid = services.owner_uid(klb)
    if uid is not None:
        await floating.release(ctx, klb, uid)
        timeout = ctx.config.octavia.provisioning_timeout
        for lb in await octavia.list_load_balancers(
                tags=[*octavia.base_tags, context.service_tag(uid)]):
            if lb.provisioning_status.startswith("PENDING"):
                await octavia.wait_load_balancer(lb.id, timeout=timeout)
            await octavia.delete_load_balancer(lb.id, cascade=True)
            await octavia.wait_load_balancer_deleted(lb.id, timeout=timeout)
            LOG.info("service %s/%s: load balancer %s released", meta["namespace"],
                     meta["name"], lb.id)
        ctx.services_seen.pop(uid, None)
    await ctx.kube.set_finalizer(resources.KURYR_LOAD_BALANCERS, klb,
                                 context.LOADBALANCER_FINALIZER, present=False)
