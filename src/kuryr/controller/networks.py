"""Namespaces and KuryrNetworks: a namespace's Neutron network, subnet and router interface.

Namespace-subnet mode: each namespace gets a KuryrNetwork (finalizer, ownerReference to the
namespace) and, for it, a Neutron network, a subnet from ``[kubernetes] pod_subnet_pool`` and
an interface on ``[kubernetes] pod_router`` (a name or an ID, looked up once: a name must
match one router), in the project of the namespace's
``openstack.org/kuryr-project`` annotation (else ``[kubernetes] project_id``). Each step finds
what already exists by its owner tag before creating, so a controller restarted mid-way
creates no duplicate. Release waits until no KuryrPort of the namespace is left, then removes
the pool ports on the network (``kuryr.pools.nodes``), the router interface, subnet and
network, then the finalizer. In the ``default`` subnet driver (``placing``) namespaces get no
KuryrNetwork; one left from the namespace driver is still released with its namespace.
"""

from __future__ import annotations

import logging
from typing import Any

from kuryr import errors
from kuryr.controller import context, placing
from kuryr.k8s import api, resources
from kuryr.neutron import client, failures
from kuryr.neutron import resources as neutron_resources
from kuryr.pools import nodes

LOG = logging.getLogger(__name__)


async def handle_namespace(ctx: context.Context, name: str) -> float | None:
    """Make sure a live namespace has its KuryrNetwork (same name, in the namespace)."""
    namespace = ctx.cached("namespaces", None, name)
    if namespace is None or namespace["metadata"].get("deletionTimestamp"):
        return None  # its content, the KuryrNetwork included, is deleted with it
    if placing.is_default_mode(ctx):
        return None  # its pods go on the default subnet
    meta = namespace["metadata"]
    project_id = placing.project_of(ctx, namespace) or ""
    spec = {"nsName": name, "projectId": project_id, "nsLabels": meta.get("labels") or {}}
    network = ctx.cached("kuryrnetworks", name, name)
    if network is None:
        await ctx.kube.create(resources.KURYR_NETWORKS, name, {
            "metadata": {"name": name, "namespace": name,
                         "finalizers": [context.NETWORK_FINALIZER],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Namespace",
                                              "name": name, "uid": meta["uid"]}]},
            "spec": spec})
    elif network.get("spec", {}).get("nsLabels") != spec["nsLabels"]:
        # The project of an existing network does not move; labels are kept current.
        await ctx.kube.patch(resources.KURYR_NETWORKS, name, name,
                             {"spec": {"nsLabels": spec["nsLabels"]}})
    return None


async def handle_network(ctx: context.Context, namespace: str, name: str) -> float | None:
    """Create or release the Neutron side of a KuryrNetwork."""
    network = ctx.cached("kuryrnetworks", namespace, name)
    if network is None:
        return None
    if network["metadata"].get("deletionTimestamp"):
        return await _release(ctx, network)
    if placing.is_default_mode(ctx):
        return None
    await _ensure(ctx, network)  # its status change wakes the namespace's KuryrPorts
    return None


def _owner_uid(network: api.Object) -> str:
    for ref in network["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Namespace":
            return str(ref["uid"])
    raise errors.PermanentError(
        f"KuryrNetwork {network['metadata']['name']} has no Namespace ownerReference")


async def _ensure(ctx: context.Context, network: api.Object) -> None:
    settings = ctx.config.kubernetes
    if not settings.pod_subnet_pool or not settings.pod_router:
        raise errors.ConfigError(
            "namespace-subnet mode needs [kubernetes] pod_subnet_pool and pod_router")
    spec = network.get("spec") or {}
    tag = context.namespace_tag(_owner_uid(network))
    project_id = spec.get("projectId") or None
    neutron = ctx.neutron
    # Both before creating anything.
    router_id = await pod_router_id(ctx)
    pool = await neutron.get_subnet_pool(settings.pod_subnet_pool)
    # Neutron tags a network or subnet in a second request after its POST: a controller
    # killed in between leaves it untagged, so it is also looked for by its unique name.
    name = f"k8s-{spec.get('nsName', '')}-{_owner_uid(network)}"
    nets = await neutron.list_networks(tags=[*neutron.base_tags, tag])
    if nets:
        net = nets[0]
    else:
        try:
            net = await neutron.get_network(name)
            await neutron.add_tags("network", net.id, [*neutron.base_tags, tag])
        except errors.NotFoundError:
            net = await neutron.create_network(name, tags=[tag], project_id=project_id)
    subnets = await neutron.list_subnets(network_id=net.id)  # the network is ours alone
    if subnets:
        subnet = subnets[0]
        if tag not in subnet.tags:
            await neutron.add_tags("subnet", subnet.id, [*neutron.base_tags, tag])
    else:
        subnet = await neutron.create_subnet(
            net.id, subnet_pool_id=pool.id, ip_version=pool.ip_version, tags=[tag],
            name=name)
    interfaces = await neutron.list_ports(network_id=net.id,
                                          device_owner=context.ROUTER_INTERFACE)
    if not any(p.device_id == router_id for p in interfaces):
        try:
            await neutron.add_router_interface(router_id, subnet.id)
        except errors.NotFoundError:
            ctx.pod_router_id = None  # the router may have been made again: look it up anew
            raise
    status: dict[str, Any] = {"netId": net.id, "subnetId": subnet.id,
                              "subnetCIDR": subnet.cidr, "routerId": router_id,
                              "populated": True}
    current = network.get("status") or {}
    if any(current.get(k) != v for k, v in status.items()) or current.get("conditions"):
        status["conditions"] = None
        meta = network["metadata"]
        await ctx.kube.patch(resources.KURYR_NETWORKS, meta["namespace"], meta["name"],
                             {"status": status}, status=True)
        LOG.info("namespace %s: network %s, subnet %s (%s)", spec.get("nsName"), net.id,
                 subnet.id, subnet.cidr)


async def pod_router_id(ctx: context.Context) -> str:
    """The ID of ``[kubernetes] pod_router``, given as a name or an ID (upstream's option
    takes an ID; the shipped ConfigMap gives a name), looked up once per term. Raises
    ConfigError when no router or several routers have that name or ID, TemporaryError."""
    if ctx.pod_router_id is None:
        wanted = ctx.config.kubernetes.pod_router or ""
        try:
            router = await ctx.neutron.get_router(wanted)
        except errors.NotFoundError as e:
            raise errors.ConfigError(f"[kubernetes] pod_router = {wanted!r}: no router has "
                                     f"that name or ID ({e})") from e
        except failures.AmbiguousNameError as e:
            raise errors.ConfigError(f"[kubernetes] pod_router = {wanted!r}: several routers "
                                     f"have that name; give its ID ({e})") from e
        ctx.pod_router_id = router.id
    return ctx.pod_router_id


async def _release(ctx: context.Context, network: api.Object) -> float | None:
    meta = network["metadata"]
    if ctx.informers["kuryrports"].in_namespace(meta["namespace"]):
        return None  # the last KuryrPort to go triggers this handler again
    if context.NETWORK_FINALIZER not in (meta.get("finalizers") or []):
        return None
    try:
        tag = context.namespace_tag(_owner_uid(network))
    except errors.PermanentError:
        tag = None
    neutron = ctx.neutron
    nets: list[neutron_resources.Network] = []
    if tag:
        nets = await neutron.list_networks(tags=[*neutron.base_tags, tag])
    for net in nets:
        if ctx.pool is not None:
            await ctx.pool.drop_network(net.id)
        try:
            await release_network(neutron, net.id)
        except failures.InUseError as e:
            # A port still on it (one being deleted, a pool refill that was under way) goes
            # soon: Neutron's 409 "in use" is final for Neutron, not here.
            raise errors.TemporaryError(str(e), delay=2.0) from e
    await ctx.kube.set_finalizer(resources.KURYR_NETWORKS, network, context.NETWORK_FINALIZER,
                                 present=False)
    LOG.info("namespace %s: network released", meta["namespace"])
    return None


async def release_network(neutron: client.Neutron, network_id: str) -> None:
    """Remove a namespace network: this cluster's pool ports on it, router interfaces, its
    kuryr-tagged subnets, itself. Raises PermanentError while other ports remain on it
    (Neutron's 409 SubnetInUse / NetworkInUse), TemporaryError."""
    for port in await neutron.list_ports(network_id=network_id, tags=list(neutron.base_tags)):
        if nodes.pool_node(port) is not None:
            await neutron.delete_port(port.id)
    for interface in await neutron.list_ports(network_id=network_id,
                                              device_owner=context.ROUTER_INTERFACE):
        for fixed_ip in interface.fixed_ips:
            await neutron.remove_router_interface(interface.device_id, fixed_ip.subnet_id)
    for subnet in await neutron.list_subnets(network_id=network_id,
                                             tags=list(neutron.base_tags)):
        await neutron.delete_subnet(subnet.id)
    await neutron.delete_network(network_id)
