"""The cluster group, on every pod port: ``kuryr-services-<cluster>``.

With the OVN provider a member sees the client's own address (and, for a pod reaching itself
through its Service, the VIP), so the security groups of the members' ports must admit it.
Every pod port of a cluster with Services gets its project's ``default`` group (what it had
without Services; with NetworkPolicy, kuryr's groups instead, ``podgroups``) and this one,
which holds only ingress rules:
- any protocol from the service subnet (hairpin traffic, from the VIP);
- for each type=LoadBalancer Service, its protocols and resolved target ports from its
  ``loadBalancerSourceRanges`` (else from anywhere): clients outside the cluster, through the
  floating IP;
- with ``[kubernetes] network_policy``, any protocol from the nodes' address group (the
  kubelet's probes reach every pod, as the NetworkPolicy spec requires).
It has no egress rule (Neutron's default ones are removed). Rules are compared in Neutron's
canonical form (``sgrules``) and the group is made to match in one reconcile of all Services
(one key), so shared ports never collide on Neutron's duplicate check.
"""

from __future__ import annotations

import ipaddress
import logging

from kuryr.controller import addressgroups, context, members, policyspec, services, sgrules
from kuryr.pools import nodes
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)


def group_name(ctx: context.Context) -> str:
    return f"kuryr-services-{ctx.config.cluster_id}"


async def ensure_group(ctx: context.Context) -> None:
    """Find or make the cluster's group (by its tags, then by its name); remember it in the
    context. Raises TemporaryError, PermanentError."""
    neutron = ctx.neutron
    tag = context.cluster_services_tag()
    found = await neutron.list_security_groups(tags=[*neutron.base_tags, tag])
    if not found:
        found = await neutron.list_security_groups(name=group_name(ctx))
    if found:
        ctx.services_group = found[0]
        return
    ctx.services_group = await neutron.create_security_group(
        group_name(ctx), description="kuryr: Service traffic to pods", tags=[tag])
    LOG.info("security group %s: %s", group_name(ctx), ctx.services_group.id)


async def adopt_ports(ctx: context.Context) -> int:
    """Give the Service group to the cluster's pod ports that lack it (made before the
    cluster had Services, or by an older kuryr), keeping the groups they have: one list, one
    update per such port; returns how many. Pool ports are left alone: their pool key names
    their groups, so they are retired and replaced. Raises TemporaryError, PermanentError."""
    group = ctx.services_group
    if group is None:
        return 0
    adopted = 0
    for port in await ctx.neutron.list_ports(tags=list(ctx.neutron.base_tags),
                                             device_owner=lifecycle.DEVICE_OWNER):
        if group.id in port.security_group_ids or nodes.pool_node(port) is not None:
            continue
        await ctx.neutron.update_port(
            port.id, security_group_ids=[*port.security_group_ids, group.id])
        adopted += 1
    if adopted:
        LOG.info("security group %s: added to %d pod port(s) made without it",
                 group_name(ctx), adopted)
    return adopted


def desired_rules(ctx: context.Context, nodes_group_id: str | None = None
                  ) -> set[sgrules.Rule]:
    """The ingress rules the cluster group needs, canonical: from the service subnet and the
    LoadBalancer Services' sources (with Services), from the nodes' address group (with
    NetworkPolicy)."""
    rules: set[sgrules.Rule] = set()
    if nodes_group_id is not None:
        rules |= {sgrules.canonical("ingress", ethertype,
                                    remote_address_group_id=nodes_group_id)
                  for ethertype in ("IPv4", "IPv6")}
    if ctx.octavia is None:
        return rules
    subnet = ctx.service_subnet
    if subnet is not None:
        rules.add(_ingress(None, None, None, subnet.cidr))
    for klb in ctx.informers["kuryrloadbalancers"].objects.values():
        spec = klb.get("spec") or {}
        if klb["metadata"].get("deletionTimestamp") or spec.get("type") != "LoadBalancer":
            continue
        sources = spec.get("loadBalancerSourceRanges") or ["0.0.0.0/0"]
        for port in members.service_ports(spec):
            for member in members.desired_members(spec, port, subnet_of=lambda _: None):
                for cidr in sources:
                    rules.add(_ingress(port.protocol, member.protocol_port,
                                       member.protocol_port, cidr))
    return rules


def _ingress(protocol: str | None, low: int | None, high: int | None,
             cidr: str) -> sgrules.Rule:
    network = ipaddress.ip_network(cidr, strict=False)
    return sgrules.canonical("ingress", f"IPv{network.version}", protocol, low, high,
                             str(network))


async def handle_rules(ctx: context.Context) -> float | None:
    """Make the group's rules match what the Services (and, with NetworkPolicy, the nodes)
    need; it has no egress rule (a pod's egress is its other groups' business)."""
    with_services = ctx.octavia is not None and bool(ctx.config.kubernetes.service_subnet)
    with_policy = ctx.config.kubernetes.network_policy
    if not with_services and not with_policy:
        return None
    if ctx.services_group is None:
        await ensure_group(ctx)
    assert ctx.services_group is not None
    if with_services:
        await services.service_subnet(ctx)
    nodes_group_id = None
    if with_policy:
        nodes = policyspec.nodes_peer()
        name = policyspec.group_name(ctx.config.cluster_id, nodes)
        nodes_group_id = (await addressgroups.ensure(ctx, {name: nodes}))[name]
    await sgrules.sync(ctx, ctx.services_group.id, desired_rules(ctx, nodes_group_id),
                       description="kuryr: Service and node traffic")
    return None
