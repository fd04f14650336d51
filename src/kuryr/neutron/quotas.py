"""Project quotas, the part of ``client.Neutron`` that reads and sets a project's limits
(NetworkPolicy makes a security group per policy and rules per peer: Neutron's defaults of 10
groups and 100 rules are soon met). Calls go through ``facade.Facade``; which limits a project
needs is decided by the callers (the local cloud raises its own, ``kuryr.cloud``).
"""

from __future__ import annotations

from kuryr import errors
from kuryr.neutron import facade, resources


class Quotas(facade.Facade):
    async def get_quota(self, project_id: str) -> resources.Quota:
        """The project's limits (Neutron's defaults for a project it has never seen)."""
        r = await self._call(f"get quota of project {project_id}", self._net.get_quota,
                             project_id)
        return resources.quota(r, project_id)

    async def update_quota(self, project_id: str, **limits: int) -> resources.Quota:
        """Set the named limits (``security_groups=200``, ``security_group_rules=2000``,
        ``ports``, ...: the fields of ``resources.Quota``; -1 is unlimited) to these values;
        the others stay. Raises PermanentError for a name that is no limit (before any
        request) or a limit below what the project uses already (Neutron 29 refuses it: 400
        "must be greater than or equal to already used")."""
        unknown = sorted(set(limits) - set(resources.QUOTA_LIMITS))
        if unknown:
            raise errors.PermanentError(
                f"update quota of project {project_id}: no such limit {', '.join(unknown)} "
                f"(limits: {', '.join(resources.QUOTA_LIMITS)})")
        r = await self._call(f"update quota of project {project_id}", self._net.update_quota,
                             project_id, **limits)
        return resources.quota(r, project_id)
