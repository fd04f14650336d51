"""Making a security group's rules exactly a wanted set: the one mechanism every group kuryr
keeps uses (the Service group, the allow-all groups, the policies' groups).

Neutron rules are immutable and canonicalised (a port range of 1-65535 is stored unset, CIDRs
normalised, 0.0.0.0/0 and ::/0 are "anywhere") and a duplicate is refused with 409, so rules
are compared in that canonical form: what differs is deleted and created, nothing else; the
new rules are created first, in one bulk request, so a change never has a closed moment.
A new group comes with Neutron's two egress-anywhere rules; they are deleted like any other
rule that is not wanted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kuryr.controller import context
from kuryr.neutron import resources

LOG = logging.getLogger(__name__)


# A rule in Neutron's canonical form: the adapter's spec, whose equality leaves out the
# description as Neutron's duplicate check does.
Rule = resources.RuleSpec


def canonical(direction: str, ethertype: str, protocol: str | None = None,
              port_range_min: int | None = None, port_range_max: int | None = None,
              remote_ip_prefix: str | None = None, remote_group_id: str | None = None,
              remote_address_group_id: str | None = None) -> Rule:
    if (port_range_min, port_range_max) == (1, 65535) or port_range_min is None:
        port_range_min = port_range_max = None
    if remote_ip_prefix:
        network = ipaddress.ip_network(remote_ip_prefix, strict=False)
        remote_ip_prefix = None if network.prefixlen == 0 else str(network)
    return Rule(direction, ethertype, protocol.lower() if protocol else None, port_range_min,
                port_range_max, remote_ip_prefix or None, remote_group_id or None,
                remote_address_group_id or None)


def of_neutron(rule: resources.SecurityGroupRule) -> Rule:
    return canonical(rule.direction, rule.ethertype, rule.protocol, rule.port_range_min,
                     rule.port_range_max, rule.remote_ip_prefix, rule.remote_group_id,
                     rule.remote_address_group_id)


def of_spec(rule: Mapping[str, Any], *, address_group_id: str | None = None) -> Rule:
    """A KuryrNetworkPolicy ``sgRule`` (upstream's keys) in canonical form."""
    return canonical(str(rule["direction"]), str(rule.get("ethertype") or "IPv4"),
                     rule.get("protocol"), rule.get("port_range_min"),
                     rule.get("port_range_max"), rule.get("remote_ip_prefix"),
                     remote_address_group_id=address_group_id)


async def sync(ctx: context.Context, group_id: str, wanted: Iterable[Rule], *,
               description: str = "") -> list[resources.SecurityGroupRule]:
    """Make the group's rules exactly ``wanted``; returns the rules it has afterwards.
    Raises TemporaryError, PermanentError (a rule Neutron refuses, a quota)."""
    wanted = set(wanted)
    have: dict[Rule, resources.SecurityGroupRule] = {}
    extra: list[str] = []
    for rule in await ctx.neutron.list_security_group_rules(security_group_id=group_id):
        key = of_neutron(rule)
        if key in have or key not in wanted:
            extra.append(rule.id)
        else:
            have[key] = rule
    missing = sorted(wanted - set(have), key=lambda r: tuple(map(str, dataclasses.astuple(r))))
    if missing:
        made = await ctx.neutron.create_security_group_rules(
            group_id, [dataclasses.replace(r, description=description) for r in missing])
        have.update({of_neutron(r): r for r in made})
    for rule_id in extra:
        await ctx.neutron.delete_security_group_rule(rule_id)
    if missing or extra:
        LOG.info("security group %s: %d rule(s) added, %d removed", group_id, len(missing),
                 len(extra))
    return list(have.values())

