"""Floating IPs, the part of ``client.Neutron`` that gives a port (a load balancer's VIP, for
a type=LoadBalancer Service) an address on an external network. Calls go through
``facade.Facade``.

Neutron takes a floating IP's tags in a second request after its POST (as for every resource
but ports): a floating IP is findable without its tags, by its port (``list_floating_ips(
port_id=...)``), its address or the ``description`` the caller gives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kuryr.neutron import facade, resources


class FloatingIps(facade.Facade):
    async def create_floating_ip(self, network_id: str, *, port_id: str | None = None,
                                 fixed_ip_address: str | None = None,
                                 floating_ip_address: str | None = None,
                                 project_id: str | None = None, tags: Iterable[str] = (),
                                 description: str = "") -> resources.FloatingIp:
        """A floating IP from the external network ``network_id``, on ``port_id`` (at
        ``fixed_ip_address`` when the port has several) or unassociated. Raises
        QuotaExceededError when the network has no address left, PermanentError when the
        port's network is not reachable from it (no router with a gateway there)."""
        attrs: dict[str, Any] = {"floating_network_id": network_id, "description": description}
        optional = {"port_id": port_id, "fixed_ip_address": fixed_ip_address,
                    "floating_ip_address": floating_ip_address, "project_id": project_id}
        attrs.update({k: v for k, v in optional.items() if v})
        r = await self._create_tagged(f"create floating ip on network {network_id}",
                                      self._net.create_ip, self._net.delete_ip, tags, **attrs)
        return resources.floating_ip(r)

    async def get_floating_ip(self, fip_id: str) -> resources.FloatingIp:
        """Raises NotFoundError."""
        r = await self._call(f"get floating ip {fip_id}", self._net.get_ip, fip_id)
        return resources.floating_ip(r)

    async def find_floating_ip(self, address: str) -> resources.FloatingIp | None:
        """The floating IP whose (floating) address is ``address``, if any."""
        found = await self.list_floating_ips(floating_ip_address=address)
        return found[0] if found else None

    async def list_floating_ips(self, *, tags: Sequence[str] = (),
                                **query: Any) -> list[resources.FloatingIp]:
        """Floating IPs carrying every tag in ``tags`` and matching the SDK query
        (``port_id``, ``floating_network_id``, ``floating_ip_address``, ``description``,
        ...)."""
        return await self._list("list floating ips", self._net.ips, resources.floating_ip,
                                tags=tags, **query)

    async def update_floating_ip(self, fip_id: str, *, port_id: str | None
                                 ) -> resources.FloatingIp:
        """Move the floating IP to ``port_id``, or take it off its port (None)."""
        r = await self._call(f"update floating ip {fip_id}", self._net.update_ip, fip_id,
                             port_id=port_id)
        return resources.floating_ip(r)

    async def delete_floating_ip(self, fip_id: str) -> None:
        """Idempotent: a floating IP that does not exist is success."""
        await self._call(f"delete floating ip {fip_id}", self._net.delete_ip, fip_id,
                         ignore_missing=True)
