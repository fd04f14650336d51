"""Security groups and their rules, the part of ``client.Neutron`` that says which traffic may
reach a port (pods' groups, the cluster-wide group that lets Service traffic in). Calls go
through ``facade.Facade``; what to allow is decided by the callers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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
        """Idempotent. Raises PermanentError while a port still uses the group."""
        await self._call(f"delete security group {group_id}",
                         self._net.delete_security_group, group_id, ignore_missing=True)

    async def create_security_group_rule(
            self, group_id: str, *, direction: str = "ingress", ethertype: str = "IPv4",
            protocol: str | None = None, port_range_min: int | None = None,
            port_range_max: int | None = None, remote_ip_prefix: str | None = None,
            remote_group_id: str | None = None,
            description: str = "") -> resources.SecurityGroupRule:
        """Raises PermanentError when the same rule exists (Neutron ignores the description
        when it compares rules)."""
        attrs: dict[str, Any] = {"security_group_id": group_id, "direction": direction,
                                 "ether_type": ethertype}
        optional = {"protocol": protocol, "port_range_min": port_range_min,
                    "port_range_max": port_range_max, "remote_ip_prefix": remote_ip_prefix,
                    "remote_group_id": remote_group_id}
        attrs.update({k: v for k, v in optional.items() if v is not None})
        if description:
            attrs["description"] = description
        r = await self._call(f"create rule in security group {group_id}",
                             self._net.create_security_group_rule, **attrs)
        return resources.security_group_rule(r)

    async def list_security_group_rules(self, *, security_group_id: str
                                        ) -> list[resources.SecurityGroupRule]:
        return await self._list(f"list security group rules of {security_group_id}",
                                self._net.security_group_rules,
                                resources.security_group_rule, tags=(),
                                security_group_id=security_group_id)

    async def delete_security_group_rule(self, rule_id: str) -> None:
        await self._call(f"delete security group rule {rule_id}",
                         self._net.delete_security_group_rule, rule_id,
                         ignore_missing=True)
