"""Exposed and published ports (``--expose``, ``-p``) as a Neutron security group.

``ProgramExternalConnectivity`` gives the endpoint's port one more security group,
``kuryr-docker-expose-<endpoint id>``, with an ingress rule per exposed port for IPv4 and IPv6;
``RevokeExternalConnectivity`` (and ``DeleteEndpoint``) takes it off and deletes it. The port
keeps its other groups (the project's default lets containers of the same network talk), so the
group opens exposed ports to everyone else and leaves every other port closed to them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from kuryr import errors
from kuryr.libnetwork import mapping, wire
from kuryr.neutron import client, resources

LOG = logging.getLogger(__name__)


async def program(neutron: client.Neutron, endpoint_id: str, port: resources.Port,
                  exposed: Sequence[wire.ExposedPort]) -> None:
    """Open ``exposed`` on the endpoint's port. Idempotent; on failure the group is gone.
    Raises TemporaryError, PermanentError."""
    name = mapping.expose_group_name(endpoint_id)
    async with contextlib.AsyncExitStack() as undo:
        group = await _find(neutron, name)
        if group is None:
            group = await neutron.create_security_group(
                name, description=f"ports exposed by Docker endpoint {endpoint_id[:12]}",
                tags=[mapping.endpoint_tag(endpoint_id)])
            undo.push_async_callback(_delete_quietly, neutron, group.id)
        for item in exposed:
            for ethertype, prefix in (("IPv4", "0.0.0.0/0"), ("IPv6", "::/0")):
                try:
                    await neutron.create_security_group_rule(
                        group.id, direction="ingress", ethertype=ethertype,
                        protocol=item.protocol, port_range_min=item.port,
                        port_range_max=item.port, remote_ip_prefix=prefix)
                except errors.PermanentError as e:
                    if "SecurityGroupRuleExists" not in str(e):  # a repeated call is fine
                        raise
        if group.id not in port.security_group_ids:
            await neutron.update_port(port.id,
                                      security_group_ids=[*port.security_group_ids, group.id])
        undo.pop_all()
    LOG.info("endpoint %s exposes %s", endpoint_id[:12],
             ", ".join(f"{e.port}/{e.protocol}" for e in exposed))


async def revoke(neutron: client.Neutron, endpoint_id: str, *, port_id: str | None) -> None:
    """Take the endpoint's exposure group off its port (if it still exists) and delete it.
    Idempotent. Raises TemporaryError."""
    group = await _find(neutron, mapping.expose_group_name(endpoint_id))
    if group is None:
        return
    if port_id is not None:
        try:
            port = await neutron.get_port(port_id)
        except errors.NotFoundError:
            pass
        else:
            if group.id in port.security_group_ids:
                await neutron.update_port(port.id, security_group_ids=[
                    g for g in port.security_group_ids if g != group.id])
    await neutron.delete_security_group(group.id)


async def _find(neutron: client.Neutron, name: str) -> resources.SecurityGroup | None:
    try:
        return await neutron.get_security_group(name)
    except errors.NotFoundError:
        return None


async def _delete_quietly(neutron: client.Neutron, group_id: str) -> None:
    try:
        await neutron.delete_security_group(group_id)
    except errors.KuryrError as e:
        LOG.error("rollback: cannot delete security group %s: %s", group_id, e)
