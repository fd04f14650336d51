"""Docker's plugin wire: the JSON of the libnetwork remote NetworkDriver and IpamDriver
protocols, validated at this edge into frozen dataclasses, and the replies as TypedDicts.

Owns the wire names (``NetworkID``, ``PoolID``, ``com.docker.network.generic``, ...) and the
errors a malformed request gets. It knows nothing of Neutron. Docker sends Go's nil maps and
slices as ``null``, so every map and list may be null; unknown fields are ignored (newer Docker
versions add some).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from kuryr import errors

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

# Option keys Docker puts into CreateNetwork.Options and friends.
GENERIC_OPTIONS = "com.docker.network.generic"
INTERNAL = "com.docker.network.internal"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
EXPOSED_PORTS = "com.docker.network.endpoint.exposedports"
PORT_MAP = "com.docker.network.portmap"
REQUEST_ADDRESS_TYPE = "RequestAddressType"
GATEWAY_ADDRESS_TYPE = "com.docker.network.gateway"
MAC_ADDRESS_OPTION = "com.docker.network.endpoint.macaddress"

# kuryr's own options: ``-o KEY=VALUE`` on the network, ``--ipam-opt KEY=VALUE`` on the pool.
NET_UUID = "neutron.net.uuid"
NET_NAME = "neutron.net.name"
SUBNET_UUID = "neutron.subnet.uuid"
SUBNET_NAME = "neutron.subnet.name"
POOL_UUID = "neutron.pool.uuid"
POOL_NAME = "neutron.pool.name"

# IANA protocol numbers Docker uses for exposed ports.
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class WireError(errors.PermanentError):
    """A request Docker (or whoever called) sent does not follow the plugin protocol."""


# -- requests -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PoolRequest:
    """``IpamDriver.RequestPool``."""

    address_space: str
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    sub_pool: str
    options: Mapping[str, str]
    is_v6: bool


@dataclasses.dataclass(frozen=True)
class AddressRequest:
    """``IpamDriver.RequestAddress`` (``address`` is None when Docker lets kuryr choose)."""

    pool_id: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    options: Mapping[str, str]

    @property
    def is_gateway(self) -> bool:
        return self.options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_ADDRESS_TYPE

    @property
    def mac(self) -> str | None:
        mac = self.options.get(MAC_ADDRESS_OPTION)
        return mac.lower() if mac and _MAC.match(mac) else None


@dataclasses.dataclass(frozen=True)
class AddressRelease:
    """``IpamDriver.ReleaseAddress`` (the address comes without prefix length)."""

    pool_id: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True)
class IpamData:
    """One address pool of a network: its CIDR, gateway (with prefix length), the address
    space of the IPAM driver that gave it and its auxiliary addresses (``--aux-address``)."""

    pool: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
    address_space: str = ""
    aux_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


@dataclasses.dataclass(frozen=True)
class NetworkRequest:
    """``NetworkDriver.CreateNetwork`` (also ``AllocateNetwork``)."""

    network_id: str
    generic: Mapping[str, str]
    is_internal: bool
    ipam: tuple[IpamData, ...]


@dataclasses.dataclass(frozen=True)
class EndpointInterface:
    address: ipaddress.IPv4Interface | None
    address_ipv6: ipaddress.IPv6Interface | None
    mac: str | None


@dataclasses.dataclass(frozen=True)
class EndpointRequest:
    """``NetworkDriver.CreateEndpoint``."""

    network_id: str
    endpoint_id: str
    interface: EndpointInterface
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class EndpointRef:
    """Any request naming one endpoint: ``Join`` (with ``sandbox_key``), ``Leave``,
    ``DeleteEndpoint``, ``EndpointOperInfo``, ``Program/RevokeExternalConnectivity``."""

    network_id: str
    endpoint_id: str
    sandbox_key: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExposedPort:
    protocol: str
    port: int


# -- replies --------------------------------------------------------------------------------------
class InterfaceName(TypedDict):
    SrcName: str
    DstPrefix: str


class StaticRoute(TypedDict):
    Destination: str
    RouteType: int
    NextHop: str


class JoinReply(TypedDict, total=False):
    InterfaceName: InterfaceName
    Gateway: str
    GatewayIPv6: str
    StaticRoutes: list[StaticRoute]
    DisableGatewayService: bool


class InterfaceReply(TypedDict, total=False):
    Address: str
    AddressIPv6: str
    MacAddress: str


class PoolReply(TypedDict):
    PoolID: str
    Pool: str
    Data: dict[str, str]


class AddressReply(TypedDict):
    Address: str
    Data: dict[str, str]


# -- parsing --------------------------------------------------------------------------------------
def parse_body(raw: bytes, *, what: str) -> dict[str, Any]:
    """The JSON object of a request body; an empty body is ``{}``. Raises WireError."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"{what}: the request body is not valid JSON: {e}") from e
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise WireError(f"{what}: the request body must be a JSON object, not "
                        f"{type(body).__name__}")
    return body


def _str(body: Mapping[str, Any], key: str, what: str, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise WireError(f"{what}: {key} must be a string, not {type(value).__name__}")
    if required and not value:
        raise WireError(f"{what}: {key} is missing")
    return value


def _id(body: Mapping[str, Any], key: str, what: str) -> str:
    value = _str(body, key, what, required=True)
    if not _ID.match(value):
        raise WireError(f"{what}: {key} {value!r} is not a Docker ID (letters, digits, '_.-', "
                        "at most 128)")
    return value


def _map(body: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WireError(f"{what}: {key} must be a JSON object, not {type(value).__name__}")
    return value


def _str_map(body: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = _map(body, key, what)
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    if bad:
        raise WireError(f"{what}: {key} must map strings to strings ({bad[0]!r} does not)")
    return value


def _list(body: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WireError(f"{what}: {key} must be a JSON list, not {type(value).__name__}")
    return value


def _network(text: str, key: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError as e:
        raise WireError(f"{what}: {key} {text!r} is not a CIDR: {e}") from e


def _address(text: str, key: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.split("/")[0])
    except ValueError as e:
        raise WireError(f"{what}: {key} {text!r} is not an IP address: {e}") from e


def _interface(text: str, key: str,
               what: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(text)
    except ValueError as e:
        raise WireError(f"{what}: {key} {text!r} is not an address with prefix: {e}") from e


def pool_request(body: Mapping[str, Any]) -> PoolRequest:
    what = "RequestPool"
    pool = _str(body, "Pool", what)
    sub_pool = _str(body, "SubPool", what)
    if sub_pool and not pool:
        raise WireError(f"{what}: SubPool {sub_pool!r} given without Pool")
    v6 = body.get("V6", False)
    if not isinstance(v6, bool):
        raise WireError(f"{what}: V6 must be true or false")
    return PoolRequest(address_space=_str(body, "AddressSpace", what),
                       pool=_network(pool, "Pool", what) if pool else None, sub_pool=sub_pool,
                       options=_str_map(body, "Options", what), is_v6=v6)


def pool_id(body: Mapping[str, Any], what: str) -> str:
    return _str(body, "PoolID", what, required=True)


def address_request(body: Mapping[str, Any]) -> AddressRequest:
    what = "RequestAddress"
    address = _str(body, "Address", what)
    return AddressRequest(pool_id=pool_id(body, what),
                          address=_address(address, "Address", what) if address else None,
                          options=_str_map(body, "Options", what))


def address_release(body: Mapping[str, Any]) -> AddressRelease:
    what = "ReleaseAddress"
    return AddressRelease(pool_id=pool_id(body, what),
                          address=_address(_str(body, "Address", what, required=True),
                                           "Address", what))


def network_request(body: Mapping[str, Any], *, what: str = "CreateNetwork") -> NetworkRequest:
    options = _map(body, "Options", what)
    generic = options.get(GENERIC_OPTIONS) or {}
    if not isinstance(generic, dict) or not all(isinstance(v, str) for v in generic.values()):
        raise WireError(f"{what}: Options.{GENERIC_OPTIONS} must map strings to strings")
    internal = options.get(INTERNAL, False)
    ipam: list[IpamData] = []
    for key in ("IPv4Data", "IPv6Data"):
        for item in _list(body, key, what):
            if not isinstance(item, dict):
                raise WireError(f"{what}: {key} must hold JSON objects")
            gateway = _str(item, "Gateway", what)
            aux = _str_map(item, "AuxAddresses", what)
            ipam.append(IpamData(
                pool=_network(_str(item, "Pool", what, required=True), f"{key}.Pool", what),
                gateway=_interface(gateway, f"{key}.Gateway", what) if gateway else None,
                address_space=_str(item, "AddressSpace", what),
                aux_addresses=tuple(_interface(v, f"{key}.AuxAddresses.{k}", what).ip
                                    for k, v in sorted(aux.items()))))
    return NetworkRequest(network_id=_id(body, "NetworkID", what), generic=generic,
                          is_internal=internal is True or internal == "true", ipam=tuple(ipam))


def network_id(body: Mapping[str, Any], what: str) -> str:
    return _id(body, "NetworkID", what)


def endpoint_request(body: Mapping[str, Any]) -> EndpointRequest:
    what = "CreateEndpoint"
    iface = _map(body, "Interface", what)
    address = _str(iface, "Address", what)
    address_ipv6 = _str(iface, "AddressIPv6", what)
    mac = _str(iface, "MacAddress", what)
    if mac and not _MAC.match(mac):
        raise WireError(f"{what}: Interface.MacAddress {mac!r} is not a MAC address")
    v4 = _interface(address, "Interface.Address", what) if address else None
    v6 = _interface(address_ipv6, "Interface.AddressIPv6", what) if address_ipv6 else None
    if v4 is not None and not isinstance(v4, ipaddress.IPv4Interface):
        raise WireError(f"{what}: Interface.Address {address!r} is not IPv4")
    if v6 is not None and not isinstance(v6, ipaddress.IPv6Interface):
        raise WireError(f"{what}: Interface.AddressIPv6 {address_ipv6!r} is not IPv6")
    return EndpointRequest(network_id=_id(body, "NetworkID", what),
                           endpoint_id=_id(body, "EndpointID", what),
                           interface=EndpointInterface(address=v4, address_ipv6=v6,
                                                       mac=mac.lower() or None),
                           options=_map(body, "Options", what))


def endpoint_ref(body: Mapping[str, Any], what: str) -> EndpointRef:
    return EndpointRef(network_id=_id(body, "NetworkID", what),
                       endpoint_id=_id(body, "EndpointID", what),
                       sandbox_key=_str(body, "SandboxKey", what),
                       options=_map(body, "Options", what))


def exposed_ports(options: Mapping[str, Any]) -> list[ExposedPort]:
    """The ports a container exposes or publishes (``--expose``, ``-p``), each once, from
    ``ProgramExternalConnectivity``'s options. Raises WireError."""
    what = "ProgramExternalConnectivity"
    found: list[ExposedPort] = []
    for key in (EXPOSED_PORTS, PORT_MAP):
        for item in _list(options, key, what):
            if not isinstance(item, dict):
                raise WireError(f"{what}: {key} must hold JSON objects")
            proto, port = item.get("Proto"), item.get("Port")
            if proto not in PROTOCOLS or not isinstance(port, int) or not 0 < port < 65536:
                raise WireError(f"{what}: {key} entry {item!r} needs Proto 6, 17 or 132 and a "
                                "Port from 1 to 65535")
            exposed = ExposedPort(protocol=PROTOCOLS[proto], port=port)
            if exposed not in found:
                found.append(exposed)
    return found
