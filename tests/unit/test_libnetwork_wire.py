"""Docker's plugin wire as kuryr reads it: what Docker sends (nulls included), and the message a
person gets for a malformed request. Plus the pool ID and tag forms that live in Neutron."""

from __future__ import annotations

import ipaddress

import pytest

from kuryr import errors
from kuryr.libnetwork import mapping, wire
from kuryr.neutron import resources


def test_malformed_json_is_a_wire_error_naming_the_call() -> None:
    with pytest.raises(wire.WireError, match="CreateNetwork: the request body is not valid JSON"):
        wire.parse_body(b"{oops", what="CreateNetwork")
    with pytest.raises(wire.WireError, match="must be a JSON object, not list"):
        wire.parse_body(b"[1]", what="Join")
    assert wire.parse_body(b"", what="Plugin.Activate") == {}
    assert wire.parse_body(b"null", what="Plugin.Activate") == {}
    assert issubclass(wire.WireError, errors.PermanentError)


def test_create_network_as_docker_sends_it() -> None:
    request = wire.network_request({
        "NetworkID": "ab" * 32,
        "Options": {"com.docker.network.enable_ipv6": True,
                    "com.docker.network.generic": {"neutron.net.uuid": "n-1"},
                    "com.docker.network.internal": True},
        "IPv4Data": [{"AddressSpace": "kuryr-local", "Pool": "10.1.0.0/24",
                      "Gateway": "10.1.0.1/24", "AuxAddresses": None}],
        "IPv6Data": None,
    })
    assert request.network_id == "ab" * 32
    assert request.generic == {"neutron.net.uuid": "n-1"}
    assert request.is_internal
    assert request.ipam == (wire.IpamData(pool=ipaddress.ip_network("10.1.0.0/24"),
                                          gateway=ipaddress.ip_interface("10.1.0.1/24"),
                                          address_space="kuryr-local"),)


@pytest.mark.parametrize(("body", "message"), [
    ({}, "NetworkID is missing"),
    ({"NetworkID": 5}, "NetworkID must be a string, not int"),
    ({"NetworkID": "a,b"}, "is not a Docker ID"),
    ({"NetworkID": "n", "Options": []}, "Options must be a JSON object"),
    ({"NetworkID": "n", "IPv4Data": [{"Pool": "10.0.0.0/33"}]}, "IPv4Data.Pool '10.0.0.0/33'"),
    ({"NetworkID": "n", "Options": {"com.docker.network.generic": {"a": 1}}},
     "must map strings to strings"),
])
def test_malformed_create_network_says_what_is_wrong(body: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        wire.network_request(body)


def test_endpoint_request_with_nulls_and_bad_addresses() -> None:
    request = wire.endpoint_request({"NetworkID": "n", "EndpointID": "e", "Interface": None,
                                     "Options": None})
    assert request.interface == wire.EndpointInterface(address=None, address_ipv6=None, mac=None)
    request = wire.endpoint_request({"NetworkID": "n", "EndpointID": "e", "Interface": {
        "Address": "10.0.0.5/24", "AddressIPv6": "fd00::5/64", "MacAddress": "02:42:0A:00:00:05"}})
    assert str(request.interface.address) == "10.0.0.5/24"
    assert str(request.interface.address_ipv6) == "fd00::5/64"
    assert request.interface.mac == "02:42:0a:00:00:05"
    with pytest.raises(wire.WireError, match="is not IPv4"):
        wire.endpoint_request({"NetworkID": "n", "EndpointID": "e",
                               "Interface": {"Address": "fd00::5/64"}})
    with pytest.raises(wire.WireError, match="not a MAC address"):
        wire.endpoint_request({"NetworkID": "n", "EndpointID": "e",
                               "Interface": {"MacAddress": "nope"}})


def test_pool_and_address_requests() -> None:
    pool = wire.pool_request({"AddressSpace": "kuryr-local", "Pool": "", "SubPool": "",
                              "Options": None, "V6": True})
    assert pool.pool is None and pool.is_v6
    with pytest.raises(wire.WireError, match="given without Pool"):
        wire.pool_request({"SubPool": "10.0.0.0/25"})
    gateway = wire.address_request({"PoolID": "p@10.0.0.0/24", "Address": "",
                                    "Options": {"RequestAddressType":
                                                "com.docker.network.gateway"}})
    assert gateway.is_gateway and gateway.address is None
    endpoint = wire.address_request({"PoolID": "p", "Address": "10.0.0.7", "Options": {
        "com.docker.network.endpoint.macaddress": "02:42:0a:00:00:07"}})
    assert not endpoint.is_gateway
    assert str(endpoint.address) == "10.0.0.7"
    assert endpoint.mac == "02:42:0a:00:00:07"
    with pytest.raises(wire.WireError, match="PoolID is missing"):
        wire.address_request({})
    release = wire.address_release({"PoolID": "p", "Address": "10.0.0.7"})
    assert str(release.address) == "10.0.0.7"


def test_exposed_and_published_ports_are_merged() -> None:
    ports = wire.exposed_ports({
        "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80},
                                                     {"Proto": 17, "Port": 53}],
        "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                        "HostPort": 8080, "HostPortEnd": 8080}],
    })
    assert ports == [wire.ExposedPort("tcp", 80), wire.ExposedPort("udp", 53)]
    assert wire.exposed_ports({}) == []
    with pytest.raises(wire.WireError, match="needs Proto 6, 17 or 132"):
        wire.exposed_ports({"com.docker.network.endpoint.exposedports": [{"Proto": 1,
                                                                          "Port": 0}]})


def test_pool_ids_round_trip_and_foreign_ones_are_refused() -> None:
    cidr = ipaddress.ip_network("fd00:1::/64")
    assert mapping.decode_pool_id(mapping.encode_pool_id("sp-1", cidr)) == ("sp-1", cidr)
    with pytest.raises(errors.PermanentError, match="not made by kuryr's IPAM"):
        mapping.decode_pool_id("LocalDefault/172.17.0.0/16")


def test_a_subnet_names_the_subnet_pool_of_its_docker_pool() -> None:
    # Two Docker networks of one CIDR: their subnets are told apart by their Docker pool's
    # subnet pool (the tag; for subnets made before it, the pool Neutron allocated them from).
    def subnet(tags: tuple[str, ...], pool: str | None) -> resources.Subnet:
        return resources.Subnet(id="s", name="", network_id="n", cidr="10.1.0.0/24",
                                ip_version=4, gateway_ip=None, subnet_pool_id=pool, tags=tags)
    assert mapping.source_pool_id(subnet((mapping.subnet_pool_tag("sp-2"),), "sp-1")) == "sp-2"
    assert mapping.source_pool_id(subnet((), "sp-1")) == "sp-1"
    assert mapping.source_pool_id(subnet((), None)) is None
    assert "/" not in mapping.subnet_pool_tag("sp-2")


def test_pool_tags_have_no_slash_and_are_read_back() -> None:
    # Neutron removes a single tag through the URL path: a '/' would make it unremovable.
    v4, v6 = ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("fd00:1::/64")
    tags = (mapping.pool_tag("c1", v4), mapping.pool_tag("c2", v6), "kuryr")
    assert all("/" not in t for t in tags)
    assert mapping.reserved_cidrs(tags) == [v4, v6]
    assert len(mapping.peer_ifname("0123456789abcdef-0123")) <= 15


def test_libnetwork_settings_are_checked() -> None:
    from kuryr import settings

    config = settings.parse("[libnetwork]\nscope = global\nwait_active = false\n"
                            "socket_path = /run/docker/plugins/k2.sock\n")
    assert config.libnetwork.scope == "global"
    assert config.libnetwork.wait_active is False
    with pytest.raises(errors.ConfigError, match="must be 'local' or 'global'"):
        settings.parse("[libnetwork]\nscope = swarm\n")
    with pytest.raises(errors.ConfigError, match="not an IPv6 prefix"):
        settings.parse("[libnetwork]\ndefault_pool_v6 = 10.0.0.0/8\n")


def test_allocation_pools_keep_the_range_and_leave_out_gateway_and_aux_addresses() -> None:
    cidr = ipaddress.ip_network("10.1.0.0/24")
    a = ipaddress.ip_address
    assert mapping.allocation_pools(cidr, ip_range=None, excluded=[a("10.1.0.1")]) == [
        {"start": "10.1.0.2", "end": "10.1.0.254"}]
    assert mapping.allocation_pools(
        cidr, ip_range=ipaddress.ip_network("10.1.0.128/25"),
        excluded=[a("10.1.0.1"), a("10.1.0.130"), a("10.1.0.131"), a("10.1.0.200")]) == [
        {"start": "10.1.0.128", "end": "10.1.0.129"},
        {"start": "10.1.0.132", "end": "10.1.0.199"},
        {"start": "10.1.0.201", "end": "10.1.0.254"}]
    v6 = ipaddress.ip_network("fd00:1::/64")
    assert mapping.allocation_pools(v6, ip_range=ipaddress.ip_network("fd00:1::/120"),
                                    excluded=[a("fd00:1::1")]) == [
        {"start": "fd00:1::2", "end": "fd00:1::ff"}]
    assert mapping.allocation_pools(ipaddress.ip_network("10.1.0.0/30"), ip_range=None,
                                    excluded=[a("10.1.0.1"), a("10.1.0.2")]) == []


def test_ip_range_tags_round_trip_without_a_slash() -> None:
    cidr, ip_range = ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_network("10.1.0.128/25")
    tag = mapping.ip_range_tag("c1", cidr, ip_range)
    assert "/" not in tag
    tags = (tag, mapping.pool_tag("c1", cidr), "kuryr")
    assert mapping.ip_range_of(tags, "c1", cidr) == ip_range
    assert mapping.ip_range_of(tags, "c2", cidr) is None
    assert mapping.ip_range_tags(tags, "c1", cidr) == [tag]


def test_create_network_reads_aux_addresses() -> None:
    request = wire.network_request({
        "NetworkID": "a" * 64, "Options": {},
        "IPv4Data": [{"AddressSpace": "kuryr-local", "Pool": "10.1.0.0/24",
                      "Gateway": "10.1.0.1/24",
                      "AuxAddresses": {"h1": "10.1.0.9/24", "h0": "10.1.0.8/24"}}]})
    assert [str(a) for a in request.ipam[0].aux_addresses] == ["10.1.0.8", "10.1.0.9"]
