"""The VIF vocabulary: gateways, routes and the versioned serialised form."""

import ipaddress

import pytest

from kuryr import model


def _vif() -> model.VIF:
    v4 = model.Subnet(subnet_id="s4", cidr=ipaddress.ip_network("10.0.0.0/24"),
                      gateway=ipaddress.ip_address("10.0.0.1"),
                      routes=(model.Route(ipaddress.ip_network("10.1.0.0/16"),
                                          ipaddress.ip_address("10.0.0.254")),),
                      dns_nameservers=("10.0.0.2",))
    v6 = model.Subnet(subnet_id="s6", cidr=ipaddress.ip_network("fd00::/64"),
                      gateway=ipaddress.ip_address("fd00::1"))
    unused = model.Subnet(subnet_id="sx", cidr=ipaddress.ip_network("10.9.0.0/24"),
                          gateway=ipaddress.ip_address("10.9.0.1"))
    return model.VIF(
        port_id="p1", mac="fa:16:3e:00:00:01", network_id="n1", mtu=1442,
        fixed_ips=(model.FixedIP(ipaddress.ip_interface("10.0.0.5/24"), "s4"),
                   model.FixedIP(ipaddress.ip_interface("fd00::5/64"), "s6")),
        subnets=(v4, v6, unused))


def test_gateways_one_per_family_from_subnets_with_addresses() -> None:
    assert [str(g) for g in _vif().gateways()] == ["10.0.0.1", "fd00::1"]


def test_routes_and_dns() -> None:
    vif = _vif()
    assert [(str(r.destination), str(r.gateway)) for r in vif.routes()] == [
        ("10.1.0.0/16", "10.0.0.254")]
    assert vif.dns_nameservers() == ["10.0.0.2"]


def test_serialised_form_round_trips() -> None:
    vif = _vif()
    data = vif.to_dict()
    assert data["schema"] == model.SCHEMA_VERSION
    assert model.VIF.from_dict(data) == vif


def test_unknown_schema_and_bad_fields_are_refused() -> None:
    data = _vif().to_dict()
    with pytest.raises(ValueError, match="unsupported VIF schema 99"):
        model.VIF.from_dict({**data, "schema": 99})
    broken = dict(data)
    del broken["mac"]
    with pytest.raises(ValueError, match="mac"):
        model.VIF.from_dict(broken)
