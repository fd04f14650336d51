"""What the Docker driver remembers between calls with the pool on (``claims``): an endpoint's
addresses requested one family at a time land on one port, ``CreateEndpoint`` finds it by
exactly those addresses, a deleted endpoint's addresses are released once; and which Docker
networks a pool port fits. No root, no cloud."""

from __future__ import annotations

import pytest

from kuryr import errors, settings
from kuryr.libnetwork import claims, mapping
from kuryr.neutron import resources

NET = "d0" * 32


def _port(port_id: str = "p1") -> resources.Port:
    return resources.Port(id=port_id, name="", network_id="n1", mac="fa:16:3e:00:00:01",
                          status="ACTIVE", fixed_ips=(
                              resources.FixedIP(subnet_id="s4", ip_address="10.0.0.5"),
                              resources.FixedIP(subnet_id="s6", ip_address="fd00::0005")))


def test_an_endpoints_addresses_are_one_claim_until_it_is_bound() -> None:
    memory = claims.Claims()
    claim = claims.Claim(port=_port(), docker_network_id=NET)
    assert memory.answer(claim, "s4") == "10.0.0.5"
    assert memory.creating(NET) is claim  # the IPv6 request comes next, for the same port
    assert memory.answer(claim, "s6") == "fd00::0005"
    # Found by exactly the addresses Docker was given, in any spelling.
    assert memory.by_addresses(NET, ["10.0.0.5", "fd00::5"]) is claim
    assert memory.by_addresses(NET, ["10.0.0.5"]) is None, "not all of the claim's addresses"
    assert memory.by_addresses("other", ["10.0.0.5", "fd00::5"]) is None
    memory.bind(claim, "ep1")
    assert memory.creating(NET) is None and memory.endpoint("ep1") is claim


def test_a_deleted_endpoints_addresses_are_released_once() -> None:
    memory = claims.Claims()
    claim = claims.Claim(port=_port(), docker_network_id=NET)
    memory.answer(claim, "s4")
    memory.answer(claim, "s6")
    memory.bind(claim, "ep1")
    memory.drop(claim, released=True)
    assert memory.endpoint("ep1") is None and memory.by_address(NET, "10.0.0.5") is None
    assert memory.is_released(NET, "10.0.0.5")
    assert not memory.is_released(NET, "10.0.0.5"), "consumed by the first ReleaseAddress"
    assert memory.is_released(NET, "fd00::5")


def test_an_address_given_back_before_its_endpoint_was_made() -> None:
    memory = claims.Claims()
    claim = claims.Claim(port=_port(), docker_network_id=NET)
    memory.answer(claim, "s4")
    memory.answer(claim, "s6")
    memory.unanswer(claim, "10.0.0.5")
    assert claim.answered == {"s6"} and memory.by_address(NET, "10.0.0.5") is None
    assert memory.forget_network(NET) == [claim]
    assert memory.creating(NET) is None and memory.by_address(NET, "fd00::5") is None


def _subnet(subnet_id: str, version: int, *, ours: bool = True) -> resources.Subnet:
    return resources.Subnet(id=subnet_id, name="", network_id="n1",
                            cidr="10.0.0.0/24" if version == 4 else "fd00::/64",
                            ip_version=version, gateway_ip=None,
                            tags=(mapping.network_tag(NET),) if ours else ())


@pytest.mark.parametrize(("subnets", "poolable"), [
    ((_subnet("s4", 4), _subnet("s6", 6)), True),
    ((_subnet("s4", 4),), True),
    # An adopted network with a subnet Docker knows nothing of: a pool port would have an
    # address (and a gateway) there that Docker never asked for.
    ((_subnet("s4", 4), _subnet("s6", 6, ours=False)), False),
    # Two IPv4 pools: Docker asks for one IPv4 address, a pool port has two.
    ((_subnet("s4", 4), _subnet("s4b", 4)), False),
    ((), False),
])
def test_which_networks_pool_ports_fit(subnets: tuple[resources.Subnet, ...],
                                       poolable: bool) -> None:
    network = resources.Network(id="n1", name="", mtu=1442, project_id="",
                                tags=(mapping.internal_tag(NET),))
    facts = claims.NetworkFacts(docker_network_id=NET, network=network, subnets=subnets)
    assert facts.is_poolable is poolable
    assert facts.is_internal and facts.pool_key.network_id == "n1"


def test_pool_settings_of_the_driver() -> None:
    default = settings.parse("")
    assert default.libnetwork.pool_enabled is True
    assert (default.libnetwork.pool_size, default.libnetwork.pool_batch) == (3, 3)
    off = settings.parse("[libnetwork]\npool_enabled = false\npool_size = 5\n")
    assert off.libnetwork.pool_enabled is False and off.libnetwork.pool_size == 5
    with pytest.raises(errors.ConfigError, match="pool_size"):
        settings.parse("[libnetwork]\npool_size = 0\n")
