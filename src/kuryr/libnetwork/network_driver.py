"""Docker's NetworkDriver on Neutron: networks, endpoints, joins.

``CreateNetwork`` makes (or, with ``-o neutron.net.*`` / ``-o neutron.subnet.*``, adopts) a
Neutron network and one subnet per Docker pool; ``CreateEndpoint`` turns the port that holds
the endpoint's addresses into a bound ``compute:kuryr`` port; ``Join`` plugs it into br-int with
the container end left for Docker to move (``SrcName``); ``Leave`` unplugs it; ``DeleteEndpoint``
deletes it; ``DeleteNetwork`` removes what kuryr made and takes kuryr's tags off what it
adopted. Exposed ports are handled by ``exposing``.

Every create registers its undo first; every delete is idempotent. No state but Neutron's.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kuryr import binding, errors, settings
from kuryr.libnetwork import exposing, ipam_driver, mapping, wire
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)


class NetworkDriver:
    """The handlers of ``/NetworkDriver.*``: each takes the parsed JSON body, returns the
    reply."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 config: settings.KuryrSettings) -> None:
        self.neutron = neutron
        self.binders = binders
        self.cluster_id = config.cluster_id
        self.host = config.binding.host
        self.config = config.libnetwork
        self.active_timeout = config.neutron.port_active_timeout

    async def get_capabilities(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"Scope": self.config.scope, "ConnectivityScope": self.config.scope}

    async def allocate_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Swarm's manager-side allocation: nothing to allocate, Neutron does it at create."""
        wire.network_request(body, what="AllocateNetwork")
        return {"Options": {}}

    async def free_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        wire.network_id(body, "FreeNetwork")
        return {}

    async def discover(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``DiscoverNew`` / ``DiscoverDelete``: node discovery means nothing to Neutron."""
        return {}

    # -- networks ---------------------------------------------------------------------------------
    async def create_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Raises NotFoundError (adopted network or subnet missing), PermanentError (options
        that contradict each other), TemporaryError. Nothing is left behind on failure."""
        request = wire.network_request(body)
        nid = request.network_id
        if await mapping.find_network(self.neutron, nid) is not None:
            return {}  # made by an earlier call that Docker did not see answered
        tags = [mapping.network_tag(nid)]
        if request.is_internal:
            tags.append(mapping.internal_tag(nid))
        async with contextlib.AsyncExitStack() as undo:
            adopted_subnet = await self._named_subnet(request.generic)
            net_name = (request.generic.get(wire.NET_UUID) or request.generic.get(wire.NET_NAME)
                        or (adopted_subnet.network_id if adopted_subnet else None))
            if net_name:
                net = await self._named_network(net_name)
                if adopted_subnet and adopted_subnet.network_id != net.id:
                    raise errors.PermanentError(
                        f"subnet {adopted_subnet.name or adopted_subnet.id} is not on network "
                        f"{net.name or net.id}")
                adopted = [*tags, mapping.adopted_tag(nid)]
                undo.push_async_callback(_quietly, functools.partial(
                    self.neutron.remove_tags, "network", net.id, adopted))
                await self.neutron.add_tags("network", net.id, adopted)
            else:
                net = await self.neutron.create_network(f"kuryr-docker-{nid[:12]}", tags=tags)
                undo.push_async_callback(_quietly, functools.partial(
                    self.neutron.delete_network, net.id))
            existing = await self.neutron.list_subnets(network_id=net.id)
            if adopted_subnet and not any(
                    ipaddress.ip_network(adopted_subnet.cidr) == d.pool for d in request.ipam):
                raise errors.PermanentError(
                    f"subnet {adopted_subnet.name or adopted_subnet.id} is "
                    f"{adopted_subnet.cidr}: create the Docker network with --subnet "
                    f"{adopted_subnet.cidr}")
            for data in request.ipam:
                await self._ensure_subnet(nid, net, data, existing, undo=undo)
            undo.pop_all()
        LOG.info("Docker network %s is Neutron network %s", nid[:12], net.id)
        return {}

    async def _named_network(self, name_or_id: str) -> resources.Network:
        try:
            return await self.neutron.get_network(name_or_id)
        except errors.NotFoundError:
            raise errors.NotFoundError(
                f"-o {wire.NET_UUID}|{wire.NET_NAME}={name_or_id}: no such Neutron network "
                "(openstack network list)") from None

    async def _named_subnet(self, generic: Mapping[str, str]) -> resources.Subnet | None:
        name_or_id = generic.get(wire.SUBNET_UUID) or generic.get(wire.SUBNET_NAME)
        if not name_or_id:
            return None
        try:
            return await self.neutron.get_subnet(name_or_id)
        except errors.NotFoundError:
            raise errors.NotFoundError(
                f"-o {wire.SUBNET_UUID}|{wire.SUBNET_NAME}={name_or_id}: no such Neutron subnet "
                "(openstack subnet list)") from None

    async def _ensure_subnet(self, nid: str, net: resources.Network, data: wire.IpamData,
                             existing: list[resources.Subnet], *,
                             undo: contextlib.AsyncExitStack) -> None:
        """The subnet of one Docker pool: an existing one of the same CIDR is adopted."""
        tags = [mapping.network_tag(nid), mapping.pool_tag(self.cluster_id, data.pool)]
        same = [s for s in existing if ipaddress.ip_network(s.cidr) == data.pool]
        if same:
            adopted = [*tags, mapping.adopted_tag(nid)]
            undo.push_async_callback(_quietly, functools.partial(
                self.neutron.remove_tags, "subnet", same[0].id, adopted))
            await self.neutron.add_tags("subnet", same[0].id, adopted)
            return
        pools = await self.neutron.list_subnet_pools(
            tags=[mapping.pool_tag(self.cluster_id, data.pool)])
        subnet = await self.neutron.create_subnet(
            net.id, cidr=str(data.pool), ip_version=data.pool.version,
            name=f"kuryr-docker-{nid[:12]}-v{data.pool.version}",
            subnet_pool_id=pools[0].id if pools else None,
            gateway_ip=str(data.gateway.ip) if data.gateway else None, tags=tags)
        undo.push_async_callback(_quietly, functools.partial(self.neutron.delete_subnet,
                                                            subnet.id))

    async def delete_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Idempotent: an unknown network is success. Raises TemporaryError, PermanentError
        (a foreign port still on kuryr's network)."""
        nid = wire.network_id(body, "DeleteNetwork")
        net = await mapping.find_network(self.neutron, nid)
        if net is None:
            return {}
        for port in await self.neutron.list_ports(tags=[mapping.network_tag(nid)]):
            endpoint_id = tagging.value_of(port.tags, mapping.ENDPOINT)
            if endpoint_id:
                await exposing.revoke(self.neutron, endpoint_id, port_id=port.id)
            await lifecycle.detach(self.neutron, self.binders, port_id=port.id)
        ours = [mapping.network_tag(nid), mapping.adopted_tag(nid), mapping.internal_tag(nid)]
        for subnet in await self.neutron.list_subnets(network_id=net.id):
            if mapping.network_tag(nid) not in subnet.tags:
                continue
            if mapping.is_adopted(subnet.tags, nid):
                pool = [t for t in subnet.tags if t.startswith(f"kuryr-{mapping.POOL}=")]
                await self.neutron.remove_tags("subnet", subnet.id, [*ours, *pool])
                continue
            await self.neutron.delete_subnet(subnet.id)
            if subnet.subnet_pool_id:
                await ipam_driver.release_own_pool(self.neutron, subnet.subnet_pool_id)
        if mapping.is_adopted(net.tags, nid):
            await self.neutron.remove_tags("network", net.id, ours)
        else:
            await self.neutron.delete_network(net.id)
        LOG.info("Docker network %s removed (Neutron network %s)", nid[:12], net.id)
        return {}

    # -- endpoints --------------------------------------------------------------------------------
    async def create_endpoint(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Make the endpoint's port: the one holding its addresses (or a new one), bound to
        this host. Replies with what Docker did not give (MAC, addresses) and nothing else.
        Raises NotFoundError, PermanentError, TemporaryError."""
        request = wire.endpoint_request(body)
        net = await mapping.require_network(self.neutron, request.network_id)
        iface = request.interface
        given = [a for a in (iface.address, iface.address_ipv6) if a is not None]
        existing = await mapping.endpoint_ports(self.neutron, request.endpoint_id)
        async with contextlib.AsyncExitStack() as undo:
            if existing:
                port = existing[0]
            else:
                port = await self._endpoint_port(request, net, given, undo=undo)
            port = await self.neutron.update_port(
                port.id, name=f"kuryr-docker-{request.endpoint_id[:12]}",
                device_owner=lifecycle.DEVICE_OWNER, device_id=request.endpoint_id,
                binding_host_id=self.host,
                tags=[mapping.network_tag(request.network_id),
                      mapping.endpoint_tag(request.endpoint_id)])
            undo.pop_all()
        LOG.info("endpoint %s is port %s", request.endpoint_id[:12], port.id)
        reply: wire.InterfaceReply = {}
        if iface.mac is None:
            reply["MacAddress"] = port.mac
        if not given:
            subnets = {s.id: s for s in await self.neutron.list_subnets(network_id=net.id)}
            for fixed in port.fixed_ips:
                subnet = subnets.get(fixed.subnet_id)
                if subnet is not None:
                    key = "AddressIPv6" if subnet.ip_version == 6 else "Address"
                    prefix = ipaddress.ip_network(subnet.cidr).prefixlen
                    reply.setdefault(key, f"{fixed.ip_address}/{prefix}")  # type: ignore[misc]
        return {"Interface": reply} if reply else {}

    async def _endpoint_port(self, request: wire.EndpointRequest, net: resources.Network,
                             given: list[Any], *,
                             undo: contextlib.AsyncExitStack) -> resources.Port:
        """The port holding the endpoint's addresses (made by kuryr's IPAM), merged into one
        if the addresses came on two; a new port if another IPAM gave them."""
        found: list[resources.Port] = []
        if request.interface.mac:
            found = await self.neutron.list_ports(network_id=net.id,
                                                  mac_address=request.interface.mac)
        if not found:
            for address in given:
                for port in await mapping.ports_with_address(self.neutron, network_id=net.id,
                                                             address=address.ip):
                    if port.id not in {p.id for p in found}:
                        found.append(port)
        if found:
            port, others = found[0], found[1:]
            if others:
                fixed = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                         for p in found for f in p.fixed_ips]
                for other in others:
                    await self.neutron.delete_port(other.id)
                port = await self.neutron.update_port(port.id, fixed_ips=fixed)
            return port
        subnets = await self.neutron.list_subnets(network_id=net.id)
        fixed_ips = []
        for address in given:
            subnet = next((s for s in subnets if address.ip in ipaddress.ip_network(s.cidr)),
                          None)
            if subnet is None:
                raise errors.PermanentError(
                    f"address {address} is on no subnet of Neutron network {net.id}")
            fixed_ips.append({"subnet_id": subnet.id, "ip_address": str(address.ip)})
        port = await self.neutron.create_port(
            net.id, tags=[mapping.network_tag(request.network_id)],
            mac=request.interface.mac, fixed_ips=fixed_ips or None)
        undo.push_async_callback(_quietly, functools.partial(self.neutron.delete_port, port.id))
        return port

    async def endpoint_oper_info(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = wire.endpoint_ref(body, "EndpointOperInfo")
        port = await mapping.require_endpoint_port(self.neutron, ref.endpoint_id)
        return {"Value": {"port_id": port.id, "status": port.status, "mac_address": port.mac,
                          "network_id": port.network_id, "host": port.host_id,
                          "fixed_ips": [f.ip_address for f in port.fixed_ips]}}

    async def delete_endpoint(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Unplug and delete the endpoint's port and its exposure. Idempotent."""
        ref = wire.endpoint_ref(body, "DeleteEndpoint")
        for port in await mapping.endpoint_ports(self.neutron, ref.endpoint_id):
            await exposing.revoke(self.neutron, ref.endpoint_id, port_id=port.id)
            await lifecycle.detach(self.neutron, self.binders, port_id=port.id)
        await exposing.revoke(self.neutron, ref.endpoint_id, port_id=None)
        return {}

    # -- joins ------------------------------------------------------------------------------------
    async def join(self, body: Mapping[str, Any]) -> wire.JoinReply:
        """Plug the endpoint's port, leaving the container end for Docker to move in.
        Raises NotFoundError, BindingError, TemporaryError (not ACTIVE in time)."""
        ref = wire.endpoint_ref(body, "Join")
        port = await mapping.require_endpoint_port(self.neutron, ref.endpoint_id)
        net = await self.neutron.get_network(port.network_id)
        attachment = await lifecycle.plug_existing_host_side(
            self.neutron, self.binders, port_id=port.id,
            peer_ifname=mapping.peer_ifname(port.id), host=self.host,
            wait_active=self.config.wait_active, active_timeout=self.active_timeout)
        reply: wire.JoinReply = {
            "InterfaceName": {"SrcName": attachment.ifname, "DstPrefix": "eth"},
            "DisableGatewayService": True,
            "StaticRoutes": [{"Destination": str(r.destination), "RouteType": 0,
                              "NextHop": str(r.gateway)} for r in attachment.vif.routes()],
        }
        if mapping.internal_tag(ref.network_id) not in net.tags:
            for gateway in attachment.vif.gateways():
                reply["GatewayIPv6" if gateway.version == 6 else "Gateway"] = str(gateway)
        LOG.info("endpoint %s joined %s as %s", ref.endpoint_id[:12], ref.sandbox_key,
                 attachment.ifname)
        return reply

    async def leave(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Unplug the host side (Docker has moved the interface back). Idempotent."""
        ref = wire.endpoint_ref(body, "Leave")
        for port in await mapping.endpoint_ports(self.neutron, ref.endpoint_id):
            await lifecycle.detach(self.neutron, self.binders, port_id=port.id,
                                   delete_port=False)
        return {}

    # -- external connectivity --------------------------------------------------------------------
    async def program_external_connectivity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = wire.endpoint_ref(body, "ProgramExternalConnectivity")
        exposed = wire.exposed_ports(ref.options)
        if exposed:
            port = await mapping.require_endpoint_port(self.neutron, ref.endpoint_id)
            await exposing.program(self.neutron, ref.endpoint_id, port, exposed)
        return {}

    async def revoke_external_connectivity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = wire.endpoint_ref(body, "RevokeExternalConnectivity")
        ports = await mapping.endpoint_ports(self.neutron, ref.endpoint_id)
        await exposing.revoke(self.neutron, ref.endpoint_id,
                              port_id=ports[0].id if ports else None)
        return {}


async def _quietly(step: Callable[[], Awaitable[None]]) -> None:
    """Run an undo step; its failure is logged, never raised over the original error."""
    try:
        await step()
    except errors.KuryrError as e:
        LOG.error("rollback failed: %s", e)
