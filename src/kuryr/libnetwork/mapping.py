"""Docker objects <-> Neutron resources, by tags only (the driver keeps no state of its own).

A Docker network is the Neutron network (and subnets) tagged ``kuryr-docker-network=<id>``;
one that kuryr adopted rather than created also carries ``kuryr-docker-adopted=<id>``, so
removing the Docker network only takes kuryr's tags off. An IPAM pool is a Neutron subnet pool
tagged ``kuryr-docker-pool=<cluster>:<address>_<prefix length>`` for every Docker pool it
serves; the subnet made for it carries the same tag and ``kuryr-docker-subnet-pool=<subnet pool
ID>``. A Docker pool is identified by both (its pool ID is ``<subnet pool ID>@<CIDR>``), not by
its CIDR alone: two Docker networks given the same ``--subnet`` each get a subnet pool of their
own (separate Neutron networks may overlap). An address is a port tagged with its
Docker network; an endpoint is that port, also tagged ``kuryr-docker-endpoint=<id>``.

Owns the tag vocabulary, the pool ID format and the lookups; decides nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress

from kuryr import errors
from kuryr.neutron import client, resources, tagging

NETWORK = "docker-network"
ADOPTED = "docker-adopted"
INTERNAL = "docker-internal"
POOL = "docker-pool"
OWN_POOL = "docker-own-pool"
DEFAULT_POOL = "docker-default-pool"
SUBNET_POOL = "docker-subnet-pool"  # on a subnet: the subnet pool of its Docker pool
IP_RANGE = "docker-ip-range"  # on a subnet pool: a Docker pool's --ip-range
ENDPOINT = "docker-endpoint"

# A port that holds an address for Docker but is not (yet) an endpoint.
RESERVED_OWNER = "kuryr:docker"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_tag(network_id: str) -> str:
    return tagging.owner(NETWORK, network_id)


def adopted_tag(network_id: str) -> str:
    return tagging.owner(ADOPTED, network_id)


def internal_tag(network_id: str) -> str:
    return tagging.owner(INTERNAL, network_id)


def endpoint_tag(endpoint_id: str) -> str:
    return tagging.owner(ENDPOINT, endpoint_id)


def pool_tag(cluster_id: str, cidr: IPNetwork) -> str:
    """The tag of a subnet pool, and of the subnet, serving the Docker pool ``cidr``."""
    return tagging.owner(POOL, _cidr_value(cluster_id, cidr))


def own_pool_tag(cluster_id: str, cidr: IPNetwork) -> str:
    """On a subnet pool kuryr made for one Docker pool: deleted when no longer used."""
    return tagging.owner(OWN_POOL, _cidr_value(cluster_id, cidr))


def _cidr_value(cluster_id: str, cidr: IPNetwork) -> str:
    # Neutron removes one tag through a URL path (DELETE .../tags/<tag>): no '/' may be in it.
    return f"{cluster_id}:{cidr.network_address}_{cidr.prefixlen}"


def ip_range_tag(cluster_id: str, cidr: IPNetwork, ip_range: IPNetwork) -> str:
    """On a subnet pool: the ``--ip-range`` of its Docker pool ``cidr`` (read at
    ``CreateNetwork``, which is not told it)."""
    return tagging.owner(IP_RANGE, f"{_cidr_value(cluster_id, cidr)}:"
                                   f"{ip_range.network_address}_{ip_range.prefixlen}")


def ip_range_tags(tags: tuple[str, ...], cluster_id: str, cidr: IPNetwork) -> list[str]:
    prefix = f"kuryr-{IP_RANGE}={_cidr_value(cluster_id, cidr)}:"
    return [t for t in tags if t.startswith(prefix)]


def ip_range_of(tags: tuple[str, ...], cluster_id: str, cidr: IPNetwork) -> IPNetwork | None:
    for tag in ip_range_tags(tags, cluster_id, cidr):
        with contextlib.suppress(ValueError):
            return ipaddress.ip_network(tag.rpartition(":")[2].replace("_", "/"))
    return None


def allocation_pools(cidr: IPNetwork, *, ip_range: IPNetwork | None,
                     excluded: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
                     ) -> list[dict[str, str]]:
    """Neutron allocation pools for a Docker pool: its ``--ip-range`` (else the whole CIDR)
    less the network (and IPv4 broadcast) address and ``excluded`` (the gateway, the
    ``--aux-address`` ones), as start/end ranges."""
    space = ip_range or cidr
    first = max(int(space.network_address), int(cidr.network_address) + 1)
    last = min(int(space.broadcast_address),
               int(cidr.broadcast_address) - (1 if cidr.version == 4 else 0))
    pools: list[dict[str, str]] = []
    for skip in sorted({int(a) for a in excluded if first <= int(a) <= last}):
        if skip > first:
            pools.append(_range(cidr, first, skip - 1))
        first = skip + 1
    if first <= last:
        pools.append(_range(cidr, first, last))
    return pools


def _range(cidr: IPNetwork, start: int, end: int) -> dict[str, str]:
    make = ipaddress.IPv4Address if cidr.version == 4 else ipaddress.IPv6Address
    return {"start": str(make(start)), "end": str(make(end))}


def subnet_pool_tag(subnet_pool_id: str) -> str:
    """On a subnet: the Neutron subnet pool of the Docker pool it serves."""
    return tagging.owner(SUBNET_POOL, subnet_pool_id)


def source_pool_id(subnet: resources.Subnet) -> str | None:
    """The subnet pool of the Docker pool a subnet serves (its tag; else, for subnets made
    before that tag, the subnet pool it was allocated from)."""
    return tagging.value_of(subnet.tags, SUBNET_POOL) or subnet.subnet_pool_id


def reserved_cidrs(tags: tuple[str, ...]) -> list[IPNetwork]:
    """The CIDRs that Docker pools (of any kuryr cluster) hold on a subnet pool."""
    prefix = f"kuryr-{POOL}="
    found: list[IPNetwork] = []
    for tag in tags:
        if tag.startswith(prefix):
            _, _, value = tag[len(prefix):].partition(":")
            with contextlib.suppress(ValueError):
                found.append(ipaddress.ip_network(value.replace("_", "/")))
    return found


def default_pool_tag(version: int) -> str:
    return tagging.owner(DEFAULT_POOL, f"v{version}")


def expose_group_name(endpoint_id: str) -> str:
    """The security group opening an endpoint's exposed ports."""
    return f"kuryr-docker-expose-{endpoint_id}"


def peer_ifname(port_id: str) -> str:
    """The container end's name in the host namespace, Docker's ``SrcName`` (Docker moves it
    into the container and renames it ``eth<N>``)."""
    return ("kd" + port_id)[:14]  # a Linux interface name has at most 15 characters


def encode_pool_id(subnet_pool_id: str, cidr: IPNetwork) -> str:
    """A Docker pool ID names the Neutron subnet pool and the CIDR taken from it."""
    return f"{subnet_pool_id}@{cidr}"


def decode_pool_id(pool_id: str) -> tuple[str, IPNetwork]:
    """Raises PermanentError for an ID that kuryr did not make."""
    subnet_pool_id, _, cidr = pool_id.partition("@")
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError:
        raise errors.PermanentError(
            f"pool ID {pool_id!r} was not made by kuryr's IPAM (expected <subnet pool>@<cidr>); "
            "use --ipam-driver kuryr when creating the network") from None
    if not subnet_pool_id:
        raise errors.PermanentError(f"pool ID {pool_id!r} names no Neutron subnet pool")
    return subnet_pool_id, network


def is_adopted(resource_tags: tuple[str, ...], network_id: str) -> bool:
    return adopted_tag(network_id) in resource_tags


async def find_network(neutron: client.Neutron, network_id: str) -> resources.Network | None:
    """The Neutron network of a Docker network, or None."""
    found = await neutron.list_networks(tags=[network_tag(network_id)])
    return found[0] if found else None


async def require_network(neutron: client.Neutron, network_id: str) -> resources.Network:
    """Raises NotFoundError naming what to do."""
    found = await find_network(neutron, network_id)
    if found is None:
        raise errors.NotFoundError(
            f"Docker network {network_id[:12]} has no Neutron network tagged "
            f"{network_tag(network_id)}: it was not created with -d kuryr against this Neutron, "
            "or its Neutron network was removed; remove and recreate the Docker network")
    return found


async def subnets_of_pool(neutron: client.Neutron, cluster_id: str, subnet_pool_id: str,
                          cidr: IPNetwork) -> list[resources.Subnet]:
    """The subnets of the Docker pool ``<subnet_pool_id>@<cidr>`` (other Docker networks may
    have subnets of the same CIDR)."""
    found = await neutron.list_subnets(tags=[pool_tag(cluster_id, cidr)])
    return [s for s in found if source_pool_id(s) == subnet_pool_id]


async def endpoint_ports(neutron: client.Neutron, endpoint_id: str) -> list[resources.Port]:
    return await neutron.list_ports(tags=[endpoint_tag(endpoint_id)])


async def require_endpoint_port(neutron: client.Neutron, endpoint_id: str) -> resources.Port:
    """Raises NotFoundError naming what to do."""
    found = await endpoint_ports(neutron, endpoint_id)
    if not found:
        raise errors.NotFoundError(
            f"endpoint {endpoint_id[:12]} has no Neutron port tagged {endpoint_tag(endpoint_id)}"
            ": its port was removed behind Docker's back; disconnect and reconnect the "
            "container")
    return found[0]


async def ports_with_address(neutron: client.Neutron, *, network_id: str,
                             address: ipaddress.IPv4Address | ipaddress.IPv6Address
                             ) -> list[resources.Port]:
    return await neutron.list_ports(network_id=network_id,
                                    fixed_ips=[f"ip_address={address}"])
