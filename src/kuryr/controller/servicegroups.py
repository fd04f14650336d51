"""The security group that lets Service traffic reach pods: ``kuryr-services-<cluster>``.

With the OVN provider a member sees the client's own address (and, for a pod reaching itself
through its Service, the VIP), so the security groups of the members' ports must admit it.
Every pod port of a cluster with Services gets two groups: its project's ``default`` group
(what it had without Services) and this one, which holds only ingress rules:
- any protocol from the service subnet (hairpin traffic, from the VIP);
- for each type=LoadBalancer Service, its protocols and resolved target ports from its
  ``loadBalancerSourceRanges`` (else from anywhere): clients outside the cluster, through the
  floating IP.
Rules are compared in Neutron's canonical form and the group is made to match in one
reconcile of all Services (one key), so shared ports never collide on Neutron's duplicate check.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from kuryr.controller import context, members, services
from kuryr.pools import nodes
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)
Rule = tuple[str, str | None, int | None, int | None, str]  # ethertype, proto, min, max, cidr


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


def desired_rules(ctx: context.Context) -> set[Rule]:
    """The ingress rules every Service of the cluster needs, canonical."""
    rules: set[Rule] = set()
    subnet = ctx.service_subnet
    if subnet is not None:
        rules.add(_canonical(None, None, None, subnet.cidr))
    for klb in ctx.informers["kuryrloadbalancers"].objects.values():
        spec = klb.get("spec") or {}
        if klb["metadata"].get("deletionTimestamp") or spec.get("type") != "LoadBalancer":
            continue
        sources = spec.get("loadBalancerSourceRanges") or ["0.0.0.0/0"]
        for port in members.service_ports(spec):
            for member in members.desired_members(spec, port, subnet_of=lambda _: None):
                for cidr in sources:
                    rules.add(_canonical(port.protocol.lower(), member.protocol_port,
                                         member.protocol_port, cidr))
    return rules


def _canonical(protocol: str | None, low: int | None, high: int | None, cidr: str) -> Rule:
    network = ipaddress.ip_network(cidr, strict=False)
    if (low, high) == (1, 65535):
        low = high = None
    return (f"IPv{network.version}", protocol, low, high, str(network))


def _existing(rule: Any) -> Rule | None:
    if rule.direction != "ingress" or rule.remote_group_id or not rule.remote_ip_prefix:
        return None
    return _canonical(rule.protocol, rule.port_range_min, rule.port_range_max,
                      rule.remote_ip_prefix)


async def handle_rules(ctx: context.Context) -> float | None:
    """Make the group's ingress rules match what the Services need."""
    if ctx.octavia is None or not ctx.config.kubernetes.service_subnet:
        return None
    if ctx.services_group is None:
        await ensure_group(ctx)
    assert ctx.services_group is not None
    await services.service_subnet(ctx)
    group_id = ctx.services_group.id
    wanted = desired_rules(ctx)
    have: dict[Rule, str] = {}
    for rule in await ctx.neutron.list_security_group_rules(security_group_id=group_id):
        key = _existing(rule)
        if key is None:
            continue
        if key in have or key not in wanted:
            await ctx.neutron.delete_security_group_rule(rule.id)
        else:
            have[key] = rule.id
    for ethertype, protocol, low, high, cidr in sorted(wanted - set(have),
                                                      key=lambda r: tuple(map(str, r))):
        await ctx.neutron.create_security_group_rule(
            group_id, direction="ingress", ethertype=ethertype, protocol=protocol,
            port_range_min=low, port_range_max=high, remote_ip_prefix=cidr,
            description="kuryr: Service traffic")
    return None
