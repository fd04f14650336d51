"""Docker's NetworkDriver on Neutron: networks, endpoints, joins.

``CreateNetwork`` makes (or, with ``-o neutron.net.*`` / ``-o neutron.subnet.*``, adopts) a
Neutron network and one subnet per Docker pool; ``CreateEndpoint`` turns the port that holds
the endpoint's addresses into a bound ``compute:kuryr`` port; ``Join`` plugs it into br-int with
the container end left for Docker to move (``SrcName``); ``Leave`` unplugs it; ``DeleteEndpoint``
deletes it; ``DeleteNetwork`` removes what kuryr made and takes kuryr's tags off what it
adopted. Exposed ports are handled by ``exposing``.

With the warm pool on, a network on kuryr's IPAM whose subnets are all Docker's keeps ready
ports (``kuryr.pools.warm``); the endpoint's port is then one the IPAM took from the pool.
``CreateEndpoint`` records on its OVS Interface that it is the endpoint's (durable before
Docker hears the answer) and rewrites its tags in the background; ``Join`` moves its interface,
already plugged and ACTIVE, out of the pool namespace under the name Docker expects; neither
calls Neutron. ``DeleteEndpoint`` unplugs it and answers; the port goes back to the pool (or is
deleted) in the background. At start-up the pool is rebuilt from Neutron tags and OVS
external_ids, and the endpoint ports whose release a killed driver left unfinished (no OVS
interface) are released.

Every create registers its undo first; every delete is idempotent. No state but Neutron's and
OVS's (``claims`` only caches them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kuryr import binding, errors, model, settings
from kuryr.libnetwork import claims, exposing, ipam_driver, mapping, wire
from kuryr.linux import announcing
from kuryr.neutron import client, resources, tagging
from kuryr.pools import warm
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)


class NetworkDriver:
    """The handlers of ``/NetworkDriver.*``: each takes the parsed JSON body, returns the
    reply."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 config: settings.KuryrSettings, networks: claims.Networks,
                 claimed: claims.Claims, pool: warm.PortPool | None = None) -> None:
        self.neutron = neutron
        self.binders = binders
        self.cluster_id = config.cluster_id
        self.host = config.binding.host
        self.config = config.libnetwork
        self.active_timeout = config.neutron.port_active_timeout
        self.networks = networks
        self.claims = claimed
        self.pool = pool
        self._announcing: set[asyncio.Task[bool]] = set()

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
        self.networks.forget(docker_network_id=nid)
        if await mapping.find_network(self.neutron, nid) is not None:
            await self._fill_pool(request)
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
        await self._fill_pool(request)
        return {}

    async def _fill_pool(self, request: wire.NetworkRequest) -> None:
        """Start filling the network's pool now, so that its first containers find ports
        ready: only for kuryr's IPAM (another one chooses addresses itself) and when a pool
        port can have exactly the addresses Docker asks for."""
        if self.pool is None or not request.ipam or any(
                d.address_space not in ipam_driver.ADDRESS_SPACES for d in request.ipam):
            return
        facts = await self.networks.facts(request.network_id)
        if facts is not None and facts.is_poolable:
            self.pool.wake(facts.pool_key)

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
        pool_tag = mapping.pool_tag(self.cluster_id, data.pool)
        subnet_pool = await self._subnet_pool_of(data.pool)
        tags = [mapping.network_tag(nid), pool_tag]
        if subnet_pool is not None:
            tags.append(mapping.subnet_pool_tag(subnet_pool.id))
        same = [s for s in existing if ipaddress.ip_network(s.cidr) == data.pool]
        ip_range = mapping.ip_range_of(subnet_pool.tags, self.cluster_id, data.pool) \
            if subnet_pool is not None else None
        if same and (ip_range is not None or data.aux_addresses):
            raise errors.PermanentError(
                f"--ip-range and --aux-address need a subnet kuryr makes: subnet "
                f"{same[0].name or same[0].id} ({same[0].cidr}) exists already and keeps its "
                "own allocation pools")
        allocation: list[dict[str, str]] = []
        if ip_range is not None or data.aux_addresses:
            gateway = data.gateway.ip if data.gateway else data.pool.network_address + 1
            allocation = mapping.allocation_pools(
                data.pool, ip_range=ip_range, excluded=[gateway, *data.aux_addresses])
            if not allocation:
                raise errors.PermanentError(
                    f"pool {data.pool}: --ip-range {ip_range} leaves no address to allocate "
                    "once the gateway and --aux-address ones are kept out")
        if same:
            adopted = [*tags, mapping.adopted_tag(nid)]
            undo.push_async_callback(_quietly, functools.partial(
                self.neutron.remove_tags, "subnet", same[0].id, adopted))
            await self.neutron.add_tags("subnet", same[0].id, adopted)
            return
        subnet = await self.neutron.create_subnet(
            net.id, cidr=str(data.pool), ip_version=data.pool.version,
            name=f"kuryr-docker-{nid[:12]}-v{data.pool.version}",
            subnet_pool_id=subnet_pool.id if subnet_pool else None, allocation_pools=allocation,
            gateway_ip=str(data.gateway.ip) if data.gateway else None, tags=tags)
        undo.push_async_callback(_quietly, functools.partial(self.neutron.delete_subnet,
                                                            subnet.id))

    async def _subnet_pool_of(self, cidr: mapping.IPNetwork) -> resources.SubnetPool | None:
        """The subnet pool ``RequestPool`` reserved ``cidr`` in for the network being made:
        ``CreateNetwork`` names only the CIDR, so it is the one holding ``cidr`` that no subnet
        serves yet (Docker makes one network's pools, then the network; with two networks of
        one ``--subnet`` each has a subnet pool of its own)."""
        pools = await self.neutron.list_subnet_pools(
            tags=[mapping.pool_tag(self.cluster_id, cidr)])
        if len(pools) <= 1:
            return pools[0] if pools else None
        served = {mapping.source_pool_id(s) for s in await self.neutron.list_subnets(
            tags=[mapping.pool_tag(self.cluster_id, cidr)])}
        return next((p for p in pools if p.id not in served), pools[0])

    async def delete_network(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Idempotent: an unknown network is success. Raises TemporaryError, PermanentError
        (a foreign port still on kuryr's network)."""
        nid = wire.network_id(body, "DeleteNetwork")
        net = await mapping.find_network(self.neutron, nid)
        self.networks.forget(docker_network_id=nid)
        if net is None:
            return {}
        if self.pool is not None:
            # No port of the network may be left behind: its releases and retags finish, the
            # pool ports set aside for endpoints never made go back, and the pool goes.
            await self.pool.wait_released(net.id)
            await self.pool.settle()
            for claim in self.claims.forget_network(nid):
                if claim.ready is not None and claim.endpoint_id is None:
                    self.pool.give_back(claim.ready)
            await self.pool.drain(warm.PoolKey(network_id=net.id))
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
                pool = [t for t in subnet.tags if t.startswith(
                    (f"kuryr-{mapping.POOL}=", f"kuryr-{mapping.SUBNET_POOL}="))]
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
        iface = request.interface
        given = [a for a in (iface.address, iface.address_ipv6) if a is not None]
        if self.pool is not None and given:
            claim = self.claims.by_addresses(request.network_id, [str(a.ip) for a in given])
            if claim is None:
                claim = await self._claim_after_restart(request, given, self.pool)
            if claim is not None and claim.endpoint_id in (None, request.endpoint_id):
                return await self._create_claimed(request, claim, self.pool)
        net = await mapping.require_network(self.neutron, request.network_id)
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

    async def _create_claimed(self, request: wire.EndpointRequest, claim: claims.Claim,
                              pool: warm.PortPool) -> dict[str, Any]:
        """The endpoint of a port the IPAM gave the addresses of. A pool port becomes the
        endpoint's with no Neutron call: the hand-over is recorded on its OVS Interface
        before Docker hears the answer, its tags and name follow in the background."""
        eid = request.endpoint_id
        mac = request.interface.mac
        if claim.ready is not None and mac is not None and mac != claim.port.mac.lower():
            claim = await self._own_port_for_mac(request, claim, pool)
        if claim.endpoint_id is None:
            tags = [mapping.network_tag(request.network_id), mapping.endpoint_tag(eid)]
            name = f"kuryr-docker-{eid[:12]}"
            if claim.ready is not None:
                await pool.assign(claim.ready, tags, name=name, device_id=eid)
            else:
                claim.port = await self.neutron.update_port(
                    claim.port.id, name=name, device_owner=lifecycle.DEVICE_OWNER,
                    device_id=eid, binding_host_id=self.host, tags=tags)
            self.claims.bind(claim, eid)
        LOG.info("endpoint %s is port %s%s", eid[:12], claim.port.id,
                 " (from the pool)" if claim.ready is not None else "")
        return {"Interface": {"MacAddress": claim.port.mac}} if mac is None else {}

    async def _own_port_for_mac(self, request: wire.EndpointRequest, claim: claims.Claim,
                                pool: warm.PortPool) -> claims.Claim:
        """``--mac-address`` on a pool port's addresses: a pool port's MAC cannot change, so
        the endpoint gets a port of its own with that MAC and those addresses."""
        assert claim.ready is not None
        fixed = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                 for f in claim.port.fixed_ips if f.subnet_id in claim.answered]
        self.claims.drop(claim)
        await pool.discard(claim.ready)  # frees the addresses for the new port
        port = await self.neutron.create_port(
            claim.port.network_id, tags=[mapping.network_tag(request.network_id)],
            mac=request.interface.mac, fixed_ips=fixed)
        own = claims.Claim(port=port, docker_network_id=request.network_id)
        for f in fixed:
            self.claims.answer(own, f["subnet_id"])
        return own

    async def _claim_after_restart(self, request: wire.EndpointRequest, given: list[Any],
                                   pool: warm.PortPool) -> claims.Claim | None:
        """The pool port the IPAM took for these addresses before this process started (its
        memory of it is gone), set aside again; None for any other port."""
        facts = await self.networks.facts(request.network_id)
        if facts is None:
            return None
        for port in await mapping.ports_with_address(self.neutron, network_id=facts.network.id,
                                                     address=given[0].ip):
            if pool.host_tag not in port.tags:
                continue
            ready = pool.take_port(port.id)
            if ready is None:
                return None
            claim = claims.Claim(port=ready.port, docker_network_id=request.network_id,
                                 ready=ready)
            wanted = {str(a.ip) for a in given}
            for fixed in claim.port.fixed_ips:
                if fixed.ip_address in wanted:
                    self.claims.answer(claim, fixed.subnet_id)
            if claim.addresses() == {str(ipaddress.ip_address(a)) for a in wanted}:
                return claim
            self.claims.drop(claim)
            pool.give_back(ready)
        return None

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
        port = await self._endpoint_port_of(ref.endpoint_id)
        return {"Value": {"port_id": port.id, "status": port.status, "mac_address": port.mac,
                          "network_id": port.network_id, "host": port.host_id,
                          "fixed_ips": [f.ip_address for f in port.fixed_ips]}}

    async def delete_endpoint(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Unplug and delete the endpoint's port and its exposure. Idempotent. With the pool
        on, the port is unplugged and the answer given; it is recycled into the pool or deleted
        in the background (its missing OVS interface is what a restart finds)."""
        ref = wire.endpoint_ref(body, "DeleteEndpoint")
        if self.pool is None:
            for port in await mapping.endpoint_ports(self.neutron, ref.endpoint_id):
                await exposing.revoke(self.neutron, ref.endpoint_id, port_id=port.id)
                await lifecycle.detach(self.neutron, self.binders, port_id=port.id)
            await exposing.revoke(self.neutron, ref.endpoint_id, port_id=None)
            return {}
        claim = self.claims.endpoint(ref.endpoint_id)
        ports = [claim.port] if claim is not None else await mapping.endpoint_ports(
            self.neutron, ref.endpoint_id)
        for port in ports:
            await lifecycle.detach(self.neutron, self.binders, port_id=port.id,
                                   delete_port=False)
            self._release(port, ref.endpoint_id,
                          is_exposed=claim is None or claim.is_exposed)
        if claim is not None:
            self.claims.drop(claim, released=True)
        elif not ports:
            await exposing.revoke(self.neutron, ref.endpoint_id, port_id=None)
        return {}

    def _release(self, port: resources.Port, endpoint_id: str, *, is_exposed: bool) -> None:
        assert self.pool is not None
        self.pool.release(
            port.id, network_id=port.network_id,
            recycle_into=warm.PoolKey(network_id=port.network_id),
            prepare=functools.partial(exposing.revoke, self.neutron, endpoint_id,
                                      port_id=port.id) if is_exposed else None)

    async def recover(self) -> list[str]:
        """Release (recycle or delete, in the background) this host's Docker endpoint ports
        that have no OVS interface: their release was cut short (a driver killed after
        DeleteEndpoint answered), or their endpoint's Join never came before the driver
        stopped. Returns the port IDs. Raises TemporaryError, BindingError."""
        if self.pool is None:
            return []
        plugged = await self.pool.plugged_port_ids()
        if plugged is None:
            return []  # no way to tell unplugged from plugged: release nothing
        ports = await self.neutron.list_ports(
            tags=list(self.neutron.base_tags), device_owner=lifecycle.DEVICE_OWNER,
            **{"binding:host_id": self.host})
        released = []
        for port in ports:
            endpoint_id = tagging.value_of(port.tags, mapping.ENDPOINT)
            if endpoint_id is None or port.id in plugged or self.pool.is_releasing(port.id):
                continue
            LOG.info("releasing port %s of endpoint %s: it has no OVS interface", port.id,
                     endpoint_id[:12])
            self._release(port, endpoint_id, is_exposed=True)
            released.append(port.id)
        return released

    # -- joins ------------------------------------------------------------------------------------
    async def join(self, body: Mapping[str, Any]) -> wire.JoinReply:
        """Plug the endpoint's port, leaving the container end for Docker to move in: a pool
        port's interface, plugged and ACTIVE already, moves out of the pool namespace (no
        Neutron call); any other port gets a veth now. Raises NotFoundError, BindingError,
        TemporaryError (not ACTIVE in time)."""
        ref = wire.endpoint_ref(body, "Join")
        claim = self.claims.endpoint(ref.endpoint_id)
        if claim is not None and claim.ready is not None:
            assert self.pool is not None
            peer = mapping.peer_ifname(claim.port.id)
            await asyncio.to_thread(self.pool.hand_over_host_side, claim.port.id,
                                    peer_ifname=peer)
            facts = await self.networks.facts(ref.network_id)
            return self._join_reply(ref, peer, claim.ready.vif,
                                    is_internal=facts is not None and facts.is_internal)
        port = claim.port if claim is not None else await mapping.require_endpoint_port(
            self.neutron, ref.endpoint_id)
        net = await self.neutron.get_network(port.network_id)
        peer = mapping.peer_ifname(port.id)
        if self.pool is not None and await asyncio.to_thread(self.pool.is_waiting, port.id):
            # Taken from the pool before this process started: still in the pool namespace.
            ready = await self.pool.ready_port(port, warm.PoolKey(network_id=port.network_id))
            await asyncio.to_thread(self.pool.hand_over_host_side, port.id, peer_ifname=peer)
            vif = ready.vif
        else:
            attachment = await lifecycle.plug_existing_host_side(
                self.neutron, self.binders, port_id=port.id, peer_ifname=peer, host=self.host,
                wait_active=self.config.wait_active, active_timeout=self.active_timeout)
            vif = attachment.vif
        return self._join_reply(ref, peer, vif,
                                is_internal=mapping.internal_tag(ref.network_id) in net.tags)

    def _join_reply(self, ref: wire.EndpointRef, peer: str, vif: model.VIF, *,
                    is_internal: bool) -> wire.JoinReply:
        # Docker moves and configures the interface once this answers: announce its
        # addresses (gratuitous ARP, unsolicited NA) when it is up in the sandbox.
        if ref.sandbox_key:
            task = asyncio.get_running_loop().create_task(
                announcing.announce_when_configured(
                    ref.sandbox_key, mac=vif.mac, addresses=[f.address for f in vif.fixed_ips]),
                name=f"announce endpoint {ref.endpoint_id[:12]}")
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)
        reply: wire.JoinReply = {
            "InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
            "DisableGatewayService": True,
            "StaticRoutes": [{"Destination": str(r.destination), "RouteType": 0,
                              "NextHop": str(r.gateway)} for r in vif.routes()],
        }
        if not is_internal:
            for gateway in vif.gateways():
                reply["GatewayIPv6" if gateway.version == 6 else "Gateway"] = str(gateway)
        LOG.info("endpoint %s joined %s as %s", ref.endpoint_id[:12], ref.sandbox_key, peer)
        return reply

    async def leave(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Unplug the host side (Docker has moved the interface back). Idempotent."""
        ref = wire.endpoint_ref(body, "Leave")
        claim = self.claims.endpoint(ref.endpoint_id)
        ports = [claim.port] if claim is not None else await mapping.endpoint_ports(
            self.neutron, ref.endpoint_id)
        for port in ports:
            await lifecycle.detach(self.neutron, self.binders, port_id=port.id,
                                   delete_port=False)
        return {}

    async def _endpoint_port_of(self, endpoint_id: str) -> resources.Port:
        """The endpoint's port, from memory if this process made the endpoint. Raises
        NotFoundError."""
        claim = self.claims.endpoint(endpoint_id)
        if claim is not None:
            return claim.port
        return await mapping.require_endpoint_port(self.neutron, endpoint_id)

    # -- external connectivity --------------------------------------------------------------------
    async def program_external_connectivity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = wire.endpoint_ref(body, "ProgramExternalConnectivity")
        exposed = wire.exposed_ports(ref.options)
        if exposed:
            port = await self._endpoint_port_of(ref.endpoint_id)
            await exposing.program(self.neutron, ref.endpoint_id, port, exposed)
            claim = self.claims.endpoint(ref.endpoint_id)
            if claim is not None:
                claim.is_exposed = True
        return {}

    async def revoke_external_connectivity(self, body: Mapping[str, Any]) -> dict[str, Any]:
        ref = wire.endpoint_ref(body, "RevokeExternalConnectivity")
        claim = self.claims.endpoint(ref.endpoint_id)
        if claim is not None:
            if claim.is_exposed:
                await exposing.revoke(self.neutron, ref.endpoint_id, port_id=claim.port.id)
                claim.is_exposed = False
            return {}
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
