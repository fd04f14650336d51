"""Docker's IpamDriver on Neutron: a pool is a Neutron subnet pool, an address a Neutron port.

``RequestPool`` takes the CIDR given with ``--subnet`` (a subnet pool kuryr makes for it), a
prefix of a subnet pool named with ``--ipam-opt neutron.pool.uuid|name=``, or a free prefix of
kuryr's default v4/v6 pools, and marks the pool with the CIDR (see ``mapping``). A ``--subnet``
that another Docker network already uses gets a subnet pool of its own (each Docker network is
a Neutron network of its own, and those may overlap); a CIDR of a named or default subnet pool
is refused while another Docker network holds it (Neutron allocates it once per pool). The
pool ID (``<subnet pool>@<CIDR>``), not the CIDR, tells the networks' subnets apart. An
``--ip-range`` is kept as a tag on the subnet pool for ``CreateNetwork`` (which is not told it)
to make the subnet's allocation pool; an address asked for before the subnet exists is an
``--aux-address``, answered as it is (``CreateNetwork`` keeps it out of allocation). The Neutron
subnet itself is made by ``CreateNetwork``, which comes later; until then ``RequestAddress`` can
only answer gateway requests. Endpoint addresses are ports, made on the subnet with the MAC
Docker generates for the endpoint (``RequiresMACAddress``), so a dual-stack endpoint's IPv4 and
IPv6 requests land on one port.

With the warm pool on (``[libnetwork] pool_enabled``) a request that names no address takes a
ready port of the pool (``kuryr.pools.warm``: plugged, ACTIVE) and answers its address, with no
Neutron call; ``CreateEndpoint`` then finds that port by the address. The pool's ports have
Neutron's MACs, so the driver does not ask Docker for one (no ``RequiresMACAddress``) and ties
an endpoint's IPv4 and IPv6 requests together in memory instead (``claims``: Docker makes the
endpoints of a network one at a time). A request naming an address (``--ip``, ``--ip6``), a
network whose subnets are not all Docker's pools, or an empty pool get a port of their own as
without the pool.

Owns this translation; keeps no state but caches (everything is found again through tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from kuryr import binding, errors, settings
from kuryr.libnetwork import claims, mapping, wire
from kuryr.neutron import client, resources, tagging
from kuryr.pools import warm
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

LOCAL_ADDRESS_SPACE = "kuryr-local"
GLOBAL_ADDRESS_SPACE = "kuryr-global"
ADDRESS_SPACES = (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE)


class IpamDriver:
    """The handlers of ``/IpamDriver.*``: each takes the parsed JSON body, returns the reply."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 config: settings.KuryrSettings, networks: claims.Networks,
                 claimed: claims.Claims, pool: warm.PortPool | None = None) -> None:
        self.neutron = neutron
        self.binders = binders
        self.cluster_id = config.cluster_id
        self.config = config.libnetwork
        self.networks = networks
        self.claims = claimed
        self.pool = pool
        # Choosing an unreserved own subnet pool and reserving it is one step: two RequestPools
        # of one --subnet at once must not both take the same subnet pool.
        self._own_pools = asyncio.Lock()

    async def get_capabilities(self, body: Mapping[str, Any]) -> dict[str, Any]:
        # A pool port's MAC is Neutron's: a MAC Docker made up could not be the endpoint's.
        return {"RequiresMACAddress": self.pool is None, "RequiresRequestReplay": False}

    async def get_default_address_spaces(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    # -- pools ------------------------------------------------------------------------------------
    async def request_pool(self, body: Mapping[str, Any]) -> wire.PoolReply:
        """Raises PermanentError (bad options, CIDR of a named or default subnet pool taken),
        NotFoundError, TemporaryError."""
        request = wire.pool_request(body)
        ip_range = _ip_range(request)
        version = request.pool.version if request.pool else (6 if request.is_v6 else 4)
        named = request.options.get(wire.POOL_UUID) or request.options.get(wire.POOL_NAME)
        if named:
            pool = await self._adopted_pool(named, version)
            cidr = request.pool or await self._free_prefix(pool)
            if not any(_within(cidr, p) for p in pool.prefixes):
                raise errors.PermanentError(
                    f"--subnet {cidr} is not inside subnet pool {pool.name or pool.id} "
                    f"({', '.join(pool.prefixes)})")
        elif request.pool:
            cidr = request.pool
            async with self._own_pools:
                pool = await self._own_pool(cidr)
                await self.neutron.add_tags("subnet_pool", pool.id,
                                            [mapping.pool_tag(self.cluster_id, cidr)])
        else:
            pool = await self._default_pool(version)
            cidr = await self._free_prefix(pool)
        if not request.pool or named:
            await self._reserve(pool, cidr)
        if ip_range is not None:  # CreateNetwork reads it back from here
            await self.neutron.add_tags("subnet_pool", pool.id, [
                mapping.ip_range_tag(self.cluster_id, cidr, ip_range)])
        pool_id = mapping.encode_pool_id(pool.id, cidr)
        self.networks.forget(pool_id=pool_id)
        LOG.info("pool %s from subnet pool %s", cidr, pool.id)
        return {"PoolID": pool_id, "Pool": str(cidr), "Data": {}}

    async def release_pool(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Idempotent. Raises PermanentError (not kuryr's pool ID), TemporaryError."""
        pool_id = wire.pool_id(body, "ReleasePool")
        subnet_pool_id, cidr = mapping.decode_pool_id(pool_id)
        self.networks.forget(pool_id=pool_id)
        try:
            held = (await self.neutron.get_subnet_pool(subnet_pool_id)).tags
        except errors.NotFoundError:
            return {}
        await self.neutron.remove_tags("subnet_pool", subnet_pool_id, [
            mapping.pool_tag(self.cluster_id, cidr),
            *mapping.ip_range_tags(held, self.cluster_id, cidr)])
        await release_own_pool(self.neutron, subnet_pool_id)
        return {}

    async def _adopted_pool(self, name_or_id: str, version: int) -> resources.SubnetPool:
        try:
            pool = await self.neutron.get_subnet_pool(name_or_id)
        except errors.NotFoundError:
            raise errors.NotFoundError(
                f"--ipam-opt {wire.POOL_UUID}|{wire.POOL_NAME}={name_or_id}: no such Neutron "
                "subnet pool (openstack subnet pool list)") from None
        if pool.ip_version != version:
            raise errors.PermanentError(
                f"subnet pool {name_or_id} is IPv{pool.ip_version}, this pool is IPv{version}")
        return pool

    async def _own_pool(self, cidr: mapping.IPNetwork) -> resources.SubnetPool:
        """The subnet pool kuryr makes for one ``--subnet``: one that no Docker pool holds, else
        a new one (another Docker network may hold this CIDR in a subnet pool of its own)."""
        tag = mapping.own_pool_tag(self.cluster_id, cidr)
        reserved = mapping.pool_tag(self.cluster_id, cidr)
        found = [p for p in await self.neutron.list_subnet_pools(tags=[tag])
                 if reserved not in p.tags]
        if found:
            return found[0]
        return await self.neutron.create_subnet_pool(
            f"kuryr-docker-{cidr}", prefixes=[str(cidr)], default_prefix_length=cidr.prefixlen,
            tags=[tag])

    async def _default_pool(self, version: int) -> resources.SubnetPool:
        tag = mapping.default_pool_tag(version)
        found = await self.neutron.list_subnet_pools(tags=[*self.neutron.base_tags, tag])
        if found:
            return found[0]
        prefix = self.config.default_pool_v4 if version == 4 else self.config.default_pool_v6
        length = (self.config.default_prefixlen_v4 if version == 4
                  else self.config.default_prefixlen_v6)
        LOG.info("creating kuryr's default IPv%d subnet pool %s", version, prefix)
        return await self.neutron.create_subnet_pool(
            f"kuryr-docker-default-v{version}", prefixes=[prefix], default_prefix_length=length,
            tags=[tag])

    async def _free_prefix(self, pool: resources.SubnetPool) -> mapping.IPNetwork:
        """The first prefix of the pool's default length that no subnet and no other Docker
        pool uses. Raises QuotaExceededError when the pool is full."""
        used: list[mapping.IPNetwork] = [
            ipaddress.ip_network(s.cidr)
            for s in await self.neutron.list_subnets(subnet_pool_id=pool.id)]
        used.extend(mapping.reserved_cidrs(pool.tags))
        for prefix in pool.prefixes:
            network = ipaddress.ip_network(prefix)
            length = pool.default_prefix_length or (24 if network.version == 4 else 64)
            for candidate in network.subnets(new_prefix=max(length, network.prefixlen)):
                if not any(candidate.overlaps(u) for u in used):
                    return candidate
        raise errors.QuotaExceededError(
            f"subnet pool {pool.name or pool.id} ({', '.join(pool.prefixes)}) has no free "
            "prefix left: remove unused Docker networks or give --subnet")

    async def _reserve(self, pool: resources.SubnetPool, cidr: mapping.IPNetwork) -> None:
        tag = mapping.pool_tag(self.cluster_id, cidr)
        taken = await self.neutron.list_subnet_pools(tags=[tag])
        if taken:
            raise errors.PermanentError(
                f"{cidr} is already the pool of another Docker network on kuryr (subnet pool "
                f"{taken[0].id}); choose another --subnet (a leftover of a crash goes with "
                f"'openstack subnet pool unset --tag {tag} {taken[0].id}')")
        await self.neutron.add_tags("subnet_pool", pool.id, [tag])

    # -- addresses --------------------------------------------------------------------------------
    async def request_address(self, body: Mapping[str, Any]) -> wire.AddressReply:
        """Raises PermanentError (no subnet yet, address outside the pool), QuotaExceededError
        (pool full), TemporaryError."""
        request = wire.address_request(body)
        _, cidr = mapping.decode_pool_id(request.pool_id)
        if request.address is not None and request.address not in cidr:
            raise errors.PermanentError(f"address {request.address} is not in pool {cidr}")
        subnets = await self.networks.pool_subnets(request.pool_id)
        if request.is_gateway:
            return _reply(self._gateway(request, cidr, subnets), cidr)
        if not subnets and request.address is not None:
            # Before CreateNetwork: an --aux-address, which Docker reserves here. CreateNetwork
            # keeps it out of the subnet's allocation pools.
            return _reply(request.address, cidr)
        if not subnets:
            raise errors.PermanentError(
                f"pool {cidr} has no Neutron subnet yet: kuryr's IPAM serves only networks of "
                "kuryr's network driver (-d kuryr)")
        subnet = subnets[0]
        network_id = tagging.value_of(subnet.tags, mapping.NETWORK) or ""
        if self.pool is not None and network_id:
            address, port_id = await self._claimed_address(request, subnet, network_id,
                                                           self.pool)
        else:
            port = await self._address_port(request, subnet, network_id)
            address = next(f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id)
            port_id = port.id
        LOG.info("address %s of pool %s is port %s", address, cidr, port_id)
        return _reply(ipaddress.ip_address(address), cidr)

    async def _claimed_address(self, request: wire.AddressRequest, subnet: resources.Subnet,
                               network_id: str, pool: warm.PortPool) -> tuple[str, str]:
        """The address (and port) of an endpoint's request with the pool on: from the port
        that already holds the endpoint's other address family, else from a pool port, else
        from a port of its own."""
        wanted: dict[str, str] = {"subnet_id": subnet.id}
        if request.address is not None:
            wanted["ip_address"] = str(request.address)
        claim = self.claims.creating(network_id)
        if claim is not None and subnet.id not in claim.answered:
            # The endpoint's other address family: one port holds both.
            current = claim.address_on(subnet.id)
            if current is None or (request.address is not None
                                   and ipaddress.ip_address(current) != request.address):
                fixed = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                         for f in claim.port.fixed_ips if f.subnet_id != subnet.id]
                claim.port = await self.neutron.update_port(claim.port.id,
                                                            fixed_ips=[*fixed, wanted])
            return self.claims.answer(claim, subnet.id), claim.port.id
        facts = await self.networks.facts(network_id)
        poolable = facts is not None and facts.is_poolable
        if facts is not None and poolable and request.address is None and request.mac is None:
            ready = pool.take(facts.pool_key)  # its owner is named at CreateEndpoint
            if ready is not None:
                claim = claims.Claim(port=ready.port, docker_network_id=network_id,
                                     ready=ready)
                if claim.address_on(subnet.id) is not None:
                    return self.claims.answer(claim, subnet.id), claim.port.id
                pool.give_back(ready)
        # A port of its own: an address was named, or no pool port is ready. On a network
        # whose subnets are all Docker's it gets an address on each, as a pool port has.
        port = await self.neutron.create_port(
            subnet.network_id, name="kuryr-docker-address", device_owner=mapping.RESERVED_OWNER,
            mac=request.mac, fixed_ips=None if poolable and request.address is None else [wanted],
            tags=[mapping.network_tag(network_id)])
        claim = claims.Claim(port=port, docker_network_id=network_id)
        return self.claims.answer(claim, subnet.id), port.id

    async def _address_port(self, request: wire.AddressRequest, subnet: resources.Subnet,
                            network_id: str) -> resources.Port:
        """The port holding a requested address, without the pool: the endpoint's (found by
        the MAC Docker made for it) or a new one."""
        wanted: dict[str, str] = {"subnet_id": subnet.id}
        if request.address is not None:
            wanted["ip_address"] = str(request.address)
        if request.mac:
            same_mac = await self.neutron.list_ports(network_id=subnet.network_id,
                                                     mac_address=request.mac)
            if same_mac:
                # The endpoint's other address family: one port holds both.
                fixed = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                         for f in same_mac[0].fixed_ips if f.subnet_id != subnet.id]
                return await self.neutron.update_port(same_mac[0].id,
                                                      fixed_ips=[*fixed, wanted])
        return await self.neutron.create_port(
            subnet.network_id, name="kuryr-docker-address", device_owner=mapping.RESERVED_OWNER,
            mac=request.mac, fixed_ips=[wanted],
            tags=[mapping.network_tag(network_id)] if network_id else [])

    def _gateway(self, request: wire.AddressRequest, cidr: mapping.IPNetwork,
                 subnets: list[resources.Subnet]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if subnets and subnets[0].gateway_ip:
            gateway = ipaddress.ip_address(subnets[0].gateway_ip)
            if request.address is not None and request.address != gateway:
                raise errors.PermanentError(
                    f"gateway {request.address} asked for, but Neutron subnet {subnets[0].id} "
                    f"has gateway {gateway}")
            return gateway
        return request.address or ipaddress.ip_address(str(next(cidr.hosts())))

    async def release_address(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Give an address back: its port loses it, or goes when it has no other. Only ports
        kuryr made for Docker are touched; the gateway and unknown addresses are success. With
        the pool on, an endpoint's address goes with its port (``DeleteEndpoint`` releases it
        in the background), and a pool port whose endpoint was never made goes back to the
        pool."""
        release = wire.address_release(body)
        for subnet in await self.networks.pool_subnets(release.pool_id):
            network_id = tagging.value_of(subnet.tags, mapping.NETWORK)
            if network_id is None:
                continue
            if self.pool is not None and await self._release_claimed(
                    network_id, str(release.address), self.pool):
                continue
            for port in await mapping.ports_with_address(
                    self.neutron, network_id=subnet.network_id, address=release.address):
                if mapping.network_tag(network_id) not in port.tags:
                    continue  # not kuryr's Docker port (nor a pool's): leave it alone
                if self.pool is not None and self.pool.is_releasing(port.id):
                    continue  # its endpoint was deleted: released in the background already
                remaining = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                             for f in port.fixed_ips if f.ip_address != str(release.address)]
                if remaining:
                    await self.neutron.update_port(port.id, fixed_ips=remaining)
                else:
                    await lifecycle.detach(self.neutron, self.binders, port_id=port.id)
                LOG.info("released %s (port %s)", release.address, port.id)
        return {}

    async def _release_claimed(self, network_id: str, address: str,
                               pool: warm.PortPool) -> bool:
        """Release an address this process knows; False: look for it in Neutron."""
        if self.claims.is_released(network_id, address):
            return True  # its endpoint's port is released already
        claim = self.claims.by_address(network_id, address)
        if claim is None:
            return False
        if claim.endpoint_id is not None:
            return True  # a live endpoint's: DeleteEndpoint releases its port
        self.claims.unanswer(claim, address)
        if claim.answered:
            return True  # the endpoint's other address goes next
        self.claims.drop(claim)
        if claim.ready is not None:
            pool.give_back(claim.ready)  # never handed over: ready as it was
        else:
            await lifecycle.detach(self.neutron, self.binders, port_id=claim.port.id)
        LOG.info("released %s (port %s, never an endpoint's)", address, claim.port.id)
        return True


async def release_own_pool(neutron: client.Neutron, subnet_pool_id: str) -> None:
    """Delete a subnet pool kuryr made for one Docker pool once nothing uses it any more."""
    try:
        pool = await neutron.get_subnet_pool(subnet_pool_id)
    except errors.NotFoundError:
        return
    if tagging.value_of(pool.tags, mapping.OWN_POOL) is None or mapping.reserved_cidrs(pool.tags):
        return
    if await neutron.list_subnets(subnet_pool_id=pool.id):
        return  # the network's subnet goes at DeleteNetwork, which calls this again
    with contextlib.suppress(errors.PermanentError):  # in use after all: a later call retries
        await neutron.delete_subnet_pool(pool.id)


def _ip_range(request: wire.PoolRequest) -> mapping.IPNetwork | None:
    """The request's ``--ip-range``, inside its ``--subnet``. Raises PermanentError."""
    if not request.sub_pool or request.pool is None:
        return None
    try:
        ip_range = ipaddress.ip_network(request.sub_pool)
    except ValueError as e:
        raise errors.PermanentError(f"--ip-range {request.sub_pool} is not a CIDR: {e}") from e
    if ip_range.version != request.pool.version or \
            not ip_range.subnet_of(request.pool):  # type: ignore[arg-type]
        raise errors.PermanentError(
            f"--ip-range {ip_range} is not inside --subnet {request.pool}")
    return ip_range


def _within(cidr: mapping.IPNetwork, prefix: str) -> bool:
    outer = ipaddress.ip_network(prefix)
    return cidr.version == outer.version and cidr.subnet_of(outer)  # type: ignore[arg-type]


def _reply(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
           cidr: mapping.IPNetwork) -> wire.AddressReply:
    return {"Address": f"{address}/{cidr.prefixlen}", "Data": {}}
