"""Security groups and their rules, the part of ``client.Neutron`` that says which traffic may
reach a port (pods' groups, the cluster-wide group that lets Service traffic in, NetworkPolicy's
groups). Calls go through ``facade.Facade``; what to allow is decided by the callers.

Rules are immutable: a change is a create and a delete. Many rules of one group go in one
request (``create_security_group_rules``, all or none). A rule's remote is a prefix, another
security group or an address group (``address_groups``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kuryr import errors
from kuryr.neutron import facade, resources


class SecurityGroups(facade.Facade):
    async def create_security_group(self, name: str, *, description: str = "",
                                    tags: Iterable[str] = (),
                                    project_id: str | None = None) -> resources.SecurityGroup:
        attrs: dict[str, Any] = {"name": name, "description": description}
        if project_id:
            attrs["project_id"] = project_id
        r = await self._create_tagged(f"create security group {name}",
                                      self._net.create_security_group,
                                      self._net.delete_security_group, tags, **attrs)
        return resources.security_group(r)

    async def get_security_group(self, name_or_id: str) -> resources.SecurityGroup:
        """Raises NotFoundError (PermanentError when a name matches several groups)."""
        r = await self._call(f"find security group {name_or_id}",
                             self._net.find_security_group, name_or_id,
                             ignore_missing=False)
        return resources.security_group(r)

    async def list_security_groups(self, *, tags: Sequence[str] = (),
                                   **query: Any) -> list[resources.SecurityGroup]:
        """Groups carrying every tag in ``tags`` and matching the SDK query (``name``,
        ``project_id``, ...)."""
        return await self._list("list security groups", self._net.security_groups,
                                resources.security_group, tags=tags, **query)

    async def delete_security_group(self, group_id: str) -> None:
        """Idempotent. Raises failures.InUseError while a port still uses the group."""
        await self._call(f"delete security group {group_id}",
                         self._net.delete_security_group, group_id, ignore_missing=True)

    async def create_security_group_rule(
            self, group_id: str, *, direction: str = "ingress", ethertype: str = "IPv4",
            protocol: str | None = None, port_range_min: int | None = None,
            port_range_max: int | None = None, remote_ip_prefix: str | None = None,
            remote_group_id: str | None = None, remote_address_group_id: str | None = None,
            description: str = "", project_id: str | None = None
            ) -> resources.SecurityGroupRule:
        """One rule (see ``resources.RuleSpec`` for the values; ``remote_ip_prefix`` is sent
        canonical). Raises failures.RuleExistsError when the same rule exists, NotFoundError
        for a missing group or remote (address) group, QuotaExceededError, PermanentError
        (more than one remote, a prefix of the other ethertype, ...)."""
        spec = resources.RuleSpec(
            direction=direction, ethertype=ethertype, protocol=protocol,
            port_range_min=port_range_min, port_range_max=port_range_max,
            remote_ip_prefix=remote_ip_prefix, remote_group_id=remote_group_id,
            remote_address_group_id=remote_address_group_id, description=description)
        r = await self._call(f"create rule in security group {group_id}",
                             self._net.create_security_group_rule,
                             **_rule_attrs(group_id, spec, project_id))
        return resources.security_group_rule(r)

    async def create_security_group_rules(
            self, group_id: str, rules: Sequence[resources.RuleSpec], *,
            project_id: str | None = None) -> list[resources.SecurityGroupRule]:
        """Create ``rules`` in the group in one request (all or none), in their order.
        ``project_id`` owns the rules (counted in its quota); without it, the caller's
        project does (not the group's). No rules: no request.

        Raises failures.RuleExistsError when one of them exists (nothing is made),
        PermanentError when two of them are the same rule (before any request),
        NotFoundError, QuotaExceededError, PermanentError."""
        if not rules:
            return []
        if len(set(rules)) != len(rules):
            raise errors.PermanentError(
                f"create rules in security group {group_id}: the same rule twice")
        body = [_rule_attrs(group_id, spec, project_id) for spec in rules]
        proxy = self._net
        made = await self._call(f"create {len(body)} rules in security group {group_id}",
                                lambda: list(proxy.create_security_group_rules(body)))
        return [resources.security_group_rule(r) for r in made]

    async def list_security_group_rules(self, *, security_group_id: str
                                        ) -> list[resources.SecurityGroupRule]:
        return await self._list(f"list security group rules of {security_group_id}",
                                self._net.security_group_rules,
                                resources.security_group_rule, tags=(),
                                security_group_id=security_group_id)

    async def delete_security_group_rule(self, rule_id: str) -> None:
        """Idempotent: a rule that does not exist is success."""
        await self._call(f"delete security group rule {rule_id}",
                         self._net.delete_security_group_rule, rule_id,
                         ignore_missing=True)


def _rule_attrs(group_id: str, spec: resources.RuleSpec,
                project_id: str | None) -> dict[str, Any]:
    """The SDK's attributes of a rule: only the values given, the prefix canonical."""
    attrs: dict[str, Any] = {"security_group_id": group_id, "direction": spec.direction,
                             "ether_type": spec.ethertype}
    prefix = (resources.canonical_cidr(spec.remote_ip_prefix)
              if spec.remote_ip_prefix is not None else None)
    optional = {"protocol": spec.protocol, "port_range_min": spec.port_range_min,
                "port_range_max": spec.port_range_max, "remote_ip_prefix": prefix,
                "remote_group_id": spec.remote_group_id,
                "remote_address_group_id": spec.remote_address_group_id,
                "project_id": project_id or None}
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if spec.description:
        attrs["description"] = spec.description
    return attrs
