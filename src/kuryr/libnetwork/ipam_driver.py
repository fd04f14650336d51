"""Docker's IpamDriver on Neutron: a pool is a Neutron subnet pool, an address a Neutron port.

``RequestPool`` takes the CIDR given with ``--subnet`` (a subnet pool kuryr makes for it), a
prefix of a subnet pool named with ``--ipam-opt neutron.pool.uuid|name=``, or a free prefix of
kuryr's default v4/v6 pools, and marks the pool with the CIDR (see ``mapping``). The Neutron
subnet itself is made by ``CreateNetwork``, which comes later; until then ``RequestAddress`` can
only answer gateway requests. Endpoint addresses are ports, made on the subnet with the MAC
Docker generates for the endpoint (``RequiresMACAddress``), so a dual-stack endpoint's IPv4 and
IPv6 requests land on one port.

Owns this translation; keeps no state (everything is found again through tags).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from kuryr import binding, errors, settings
from kuryr.libnetwork import mapping, wire
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

LOCAL_ADDRESS_SPACE = "kuryr-local"
GLOBAL_ADDRESS_SPACE = "kuryr-global"


class IpamDriver:
    """The handlers of ``/IpamDriver.*``: each takes the parsed JSON body, returns the reply."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 config: settings.KuryrSettings) -> None:
        self.neutron = neutron
        self.binders = binders
        self.cluster_id = config.cluster_id
        self.config = config.libnetwork

    async def get_capabilities(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": True, "RequiresRequestReplay": False}

    async def get_default_address_spaces(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": LOCAL_ADDRESS_SPACE,
                "GlobalDefaultAddressSpace": GLOBAL_ADDRESS_SPACE}

    # -- pools ------------------------------------------------------------------------------------
    async def request_pool(self, body: Mapping[str, Any]) -> wire.PoolReply:
        """Raises PermanentError (bad options, CIDR taken), NotFoundError, TemporaryError."""
        request = wire.pool_request(body)
        if request.sub_pool:
            raise errors.PermanentError(
                f"--ip-range {request.sub_pool} is not supported by kuryr's IPAM (Neutron "
                "allocates from the whole subnet): leave it out or use a smaller --subnet")
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
            pool = await self._own_pool(cidr)
        else:
            pool = await self._default_pool(version)
            cidr = await self._free_prefix(pool)
        await self._reserve(pool, cidr)
        LOG.info("pool %s from subnet pool %s", cidr, pool.id)
        return {"PoolID": mapping.encode_pool_id(pool.id, cidr), "Pool": str(cidr), "Data": {}}

    async def release_pool(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Idempotent. Raises PermanentError (not kuryr's pool ID), TemporaryError."""
        subnet_pool_id, cidr = mapping.decode_pool_id(wire.pool_id(body, "ReleasePool"))
        await self.neutron.remove_tags("subnet_pool", subnet_pool_id,
                                       [mapping.pool_tag(self.cluster_id, cidr)])
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
        """The subnet pool kuryr makes for one ``--subnet``: made once, reused after."""
        tag = mapping.own_pool_tag(self.cluster_id, cidr)
        found = await self.neutron.list_subnet_pools(tags=[tag])
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
        subnets = await mapping.subnets_of_pool(self.neutron, self.cluster_id, cidr)
        if request.is_gateway:
            return _reply(self._gateway(request, cidr, subnets), cidr)
        if not subnets:
            raise errors.PermanentError(
                f"pool {cidr} has no Neutron subnet yet: kuryr's IPAM serves only networks of "
                "kuryr's network driver (-d kuryr), and has no auxiliary addresses "
                "(--aux-address)")
        subnet = subnets[0]
        network_id = tagging.value_of(subnet.tags, mapping.NETWORK) or ""
        wanted: dict[str, str] = {"subnet_id": subnet.id}
        if request.address is not None:
            wanted["ip_address"] = str(request.address)
        port: resources.Port | None = None
        if request.mac:
            same_mac = await self.neutron.list_ports(network_id=subnet.network_id,
                                                     mac_address=request.mac)
            if same_mac:
                # The endpoint's other address family: one port holds both.
                fixed = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                         for f in same_mac[0].fixed_ips if f.subnet_id != subnet.id]
                port = await self.neutron.update_port(same_mac[0].id,
                                                      fixed_ips=[*fixed, wanted])
        if port is None:
            port = await self.neutron.create_port(
                subnet.network_id, name="kuryr-docker-address", device_owner=mapping.RESERVED_OWNER,
                mac=request.mac, fixed_ips=[wanted],
                tags=[mapping.network_tag(network_id)] if network_id else [])
        address = next(f.ip_address for f in port.fixed_ips if f.subnet_id == subnet.id)
        LOG.info("address %s of pool %s is port %s", address, cidr, port.id)
        return _reply(ipaddress.ip_address(address), cidr)

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
        kuryr made for Docker are touched; the gateway and unknown addresses are success."""
        release = wire.address_release(body)
        _, cidr = mapping.decode_pool_id(release.pool_id)
        for subnet in await mapping.subnets_of_pool(self.neutron, self.cluster_id, cidr):
            network_id = tagging.value_of(subnet.tags, mapping.NETWORK)
            if network_id is None:
                continue
            for port in await mapping.ports_with_address(
                    self.neutron, network_id=subnet.network_id, address=release.address):
                if mapping.network_tag(network_id) not in port.tags:
                    continue  # not kuryr's Docker port: leave it alone
                remaining = [{"subnet_id": f.subnet_id, "ip_address": f.ip_address}
                             for f in port.fixed_ips if f.ip_address != str(release.address)]
                if remaining:
                    await self.neutron.update_port(port.id, fixed_ips=remaining)
                else:
                    await lifecycle.detach(self.neutron, self.binders, port_id=port.id)
                LOG.info("released %s (port %s)", release.address, port.id)
        return {}


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


def _within(cidr: mapping.IPNetwork, prefix: str) -> bool:
    outer = ipaddress.ip_network(prefix)
    return cidr.version == outer.version and cidr.subnet_of(outer)  # type: ignore[arg-type]


def _reply(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
           cidr: mapping.IPNetwork) -> wire.AddressReply:
    return {"Address": f"{address}/{cidr.prefixlen}", "Data": {}}
