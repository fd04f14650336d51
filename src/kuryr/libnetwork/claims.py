"""What the driver remembers between Docker's calls when the warm pool is on, so that a
container's hot path (``RequestAddress``, ``CreateEndpoint``, ``Join``, ...) makes no Neutron
call: which port holds the addresses Docker was given (a ``Claim``, from ``RequestAddress`` to
``DeleteEndpoint``), and the facts of each Docker network that never change while it exists
(its Neutron network and subnets).

Only a cache of what Neutron, OVS and the kernel hold: every caller falls back to looking
things up when this process does not know them (it was restarted, say), and the records that
must survive a crash are written elsewhere (owner tags in Neutron, the hand-over record on the
OVS Interface, see ``kuryr.pools.warm``). Decides nothing, calls nothing but lookups.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from kuryr.libnetwork import mapping
from kuryr.neutron import client, resources, tagging
from kuryr.pools import warm


@dataclasses.dataclass
class Claim:
    """A port holding addresses Docker was given for one endpoint. ``ready`` is set for a
    port taken from the pool (its interface waits in the pool namespace until ``Join``);
    ``answered`` are the subnets whose address Docker has."""

    port: resources.Port
    docker_network_id: str
    ready: warm.ReadyPort | None = None
    answered: set[str] = dataclasses.field(default_factory=set)
    endpoint_id: str | None = None
    is_exposed: bool = False

    def address_on(self, subnet_id: str) -> str | None:
        return next((f.ip_address for f in self.port.fixed_ips if f.subnet_id == subnet_id),
                    None)

    def addresses(self) -> set[str]:
        """The addresses Docker was given (in canonical form)."""
        return {_canonical(f.ip_address) for f in self.port.fixed_ips
                if f.subnet_id in self.answered}


class Claims:
    """Claims by address, by endpoint, and the one being made on each Docker network (Docker
    creates the endpoints of one network one at a time: ``RequestAddress`` for each address
    family, then ``CreateEndpoint``, under its per-network lock)."""

    def __init__(self) -> None:
        self._by_address: dict[tuple[str, str], Claim] = {}
        self._by_endpoint: dict[str, Claim] = {}
        self._creating: dict[str, Claim] = {}
        # Addresses of endpoints deleted here whose ReleaseAddress has not come yet.
        self._released: set[tuple[str, str]] = set()

    def creating(self, docker_network_id: str) -> Claim | None:
        """The claim of the endpoint being made on a network: not bound to an endpoint yet."""
        return self._creating.get(docker_network_id)

    def answer(self, claim: Claim, subnet_id: str) -> str:
        """Docker is given the claim's address on ``subnet_id``; returns it."""
        address = claim.address_on(subnet_id)
        assert address is not None, "answer() on a subnet the port has no address on"
        claim.answered.add(subnet_id)
        self._by_address[(claim.docker_network_id, _canonical(address))] = claim
        self._released.discard((claim.docker_network_id, _canonical(address)))
        if claim.endpoint_id is None:
            self._creating[claim.docker_network_id] = claim
        return address

    def by_address(self, docker_network_id: str, address: str) -> Claim | None:
        return self._by_address.get((docker_network_id, _canonical(address)))

    def by_addresses(self, docker_network_id: str, addresses: list[str]) -> Claim | None:
        """The one claim holding exactly ``addresses``, if there is one."""
        found = {id(c): c for a in addresses if (c := self.by_address(docker_network_id, a))}
        if len(found) != 1:
            return None
        (claim,) = found.values()
        return claim if claim.addresses() == {_canonical(a) for a in addresses} else None

    def bind(self, claim: Claim, endpoint_id: str) -> None:
        claim.endpoint_id = endpoint_id
        self._by_endpoint[endpoint_id] = claim
        if self._creating.get(claim.docker_network_id) is claim:
            del self._creating[claim.docker_network_id]

    def endpoint(self, endpoint_id: str) -> Claim | None:
        return self._by_endpoint.get(endpoint_id)

    def unanswer(self, claim: Claim, address: str) -> None:
        """Docker gave one address back (its endpoint was never made)."""
        self._by_address.pop((claim.docker_network_id, _canonical(address)), None)
        claim.answered = {s for s in claim.answered
                          if _canonical(claim.address_on(s) or "") != _canonical(address)}

    def drop(self, claim: Claim, *, released: bool = False) -> None:
        """Forget a claim; with ``released`` its addresses are remembered until Docker's
        ``ReleaseAddress`` of them (the port is being released already)."""
        for address in claim.addresses():
            key = (claim.docker_network_id, _canonical(address))
            if self._by_address.get(key) is claim:
                del self._by_address[key]
                if released:
                    self._released.add(key)
        if claim.endpoint_id is not None and self._by_endpoint.get(claim.endpoint_id) is claim:
            del self._by_endpoint[claim.endpoint_id]
        if self._creating.get(claim.docker_network_id) is claim:
            del self._creating[claim.docker_network_id]

    def is_released(self, docker_network_id: str, address: str) -> bool:
        """Whether ``address`` was an endpoint's that was deleted here (consumed)."""
        key = (docker_network_id, _canonical(address))
        if key in self._released:
            self._released.discard(key)
            return True
        return False

    def of_network(self, docker_network_id: str) -> list[Claim]:
        found = {id(c): c for (net, _), c in self._by_address.items() if net == docker_network_id}
        found.update({id(c): c for c in self._by_endpoint.values()
                      if c.docker_network_id == docker_network_id})
        return list(found.values())

    def forget_network(self, docker_network_id: str) -> list[Claim]:
        """Forget every claim of a network that goes away; returns them."""
        claims = self.of_network(docker_network_id)
        for claim in claims:
            self.drop(claim)
        self._released = {k for k in self._released if k[0] != docker_network_id}
        return claims


@dataclasses.dataclass(frozen=True)
class NetworkFacts:
    """A Docker network's Neutron network and subnets, as they were when first looked up."""

    docker_network_id: str
    network: resources.Network
    subnets: tuple[resources.Subnet, ...]

    @property
    def is_internal(self) -> bool:
        return mapping.internal_tag(self.docker_network_id) in self.network.tags

    @property
    def is_poolable(self) -> bool:
        """Whether any pool port has exactly the addresses Docker will ask for: every subnet
        of the Neutron network is a pool of this Docker network, at most one per IP version
        (Docker asks for one address per version)."""
        versions = [s.ip_version for s in self.subnets]
        tag = mapping.network_tag(self.docker_network_id)
        return bool(self.subnets) and len(set(versions)) == len(versions) and all(
            tag in s.tags for s in self.subnets)

    @property
    def pool_key(self) -> warm.PoolKey:
        return warm.PoolKey(network_id=self.network.id)


class Networks:
    """Docker networks' facts and Docker pools' subnets, looked up once and kept until the
    network (or pool) goes (``forget``)."""

    def __init__(self, neutron: client.Neutron, cluster_id: str) -> None:
        self.neutron = neutron
        self.cluster_id = cluster_id
        self._facts: dict[str, NetworkFacts] = {}
        self._pool_subnets: dict[str, list[resources.Subnet]] = {}

    async def facts(self, docker_network_id: str) -> NetworkFacts | None:
        """None when the Docker network has no Neutron network. Raises TemporaryError."""
        known = self._facts.get(docker_network_id)
        if known is not None:
            return known
        network = await mapping.find_network(self.neutron, docker_network_id)
        if network is None:
            return None
        subnets = await self.neutron.list_subnets(network_id=network.id)
        made = NetworkFacts(docker_network_id=docker_network_id, network=network,
                            subnets=tuple(subnets))
        self._facts[docker_network_id] = made
        return made

    async def pool_subnets(self, pool_id: str) -> list[resources.Subnet]:
        """The Neutron subnets of a Docker pool (none until ``CreateNetwork`` made them).
        Raises PermanentError (not kuryr's pool ID), TemporaryError."""
        key = pool_id
        known = self._pool_subnets.get(key)
        if known is not None:
            return known
        subnet_pool_id, cidr = mapping.decode_pool_id(pool_id)
        found = await mapping.subnets_of_pool(self.neutron, self.cluster_id, subnet_pool_id,
                                              cidr)
        if found:  # not before CreateNetwork made it
            self._pool_subnets[key] = found
        return found

    def forget(self, *, docker_network_id: str | None = None,
               pool_id: str | None = None) -> None:
        if docker_network_id is not None:
            self._facts.pop(docker_network_id, None)
            self._pool_subnets = {
                k: v for k, v in self._pool_subnets.items()
                if not any(tagging.value_of(s.tags, mapping.NETWORK) == docker_network_id
                           for s in v)}
        if pool_id is not None:
            self._pool_subnets.pop(pool_id, None)


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address))
