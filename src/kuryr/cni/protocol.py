"""A CNI request as plain data: the runtime's ``CNI_*`` environment and the network
configuration on stdin, parsed and validated into frozen dataclasses.

Owns what a valid request is for each command and spec version (which variables are required,
which config keys kuryr reads) and the errors (codes 1, 4, 6, 7) for invalid ones. It does no
I/O; results live in ``results``, codes in ``codes``.

kuryr's keys in a network configuration: ``network`` (Neutron network name or ID; required
in standalone mode, unused in Kubernetes mode, where each pod's KuryrPort names its network),
``subnet`` (name or ID), ``securityGroups`` (names or IDs), ``project`` (ID), ``mtu``,
``daemonSocket`` (the daemon's unix socket) and ``timeout`` (seconds to wait for the
daemon's answer), both read by the shim.

Static addresses, as the CNI conventions pass them: ``runtimeConfig`` ``ips`` (a list of
addresses, each with or without a prefix length) and ``mac`` (the ``ips`` and ``mac``
capabilities), or ``CNI_ARGS`` ``IP=`` (comma-separated) and ``MAC=``. Where both are given,
``runtimeConfig`` wins, item by item. A malformed one is error 7 (``runtimeConfig``) or 4
(``CNI_ARGS``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from kuryr.cni import codes

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
# The first spec version that has each command.
_SINCE = {"ADD": "0.1.0", "DEL": "0.1.0", "VERSION": "0.1.0", "CHECK": "0.4.0",
          "STATUS": "1.1.0", "GC": "1.1.0"}
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_IFNAMSIZ = 15
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclasses.dataclass(frozen=True)
class AttachmentKey:
    """One container interface as the runtime names it."""

    container_id: str
    ifname: str


@dataclasses.dataclass(frozen=True)
class NetConf:
    """The network configuration given on stdin (kuryr's keys translated)."""

    cni_version: str
    name: str
    network: str  # "" when not given (Kubernetes mode)
    subnet: str | None = None
    security_groups: tuple[str, ...] | None = None
    project: str | None = None
    mtu: int | None = None
    daemon_socket: str | None = None
    prev_result: Mapping[str, Any] | None = None
    valid_attachments: tuple[AttachmentKey, ...] | None = None
    runtime_ips: tuple[IpAddress, ...] = ()  # runtimeConfig "ips"
    runtime_mac: str | None = None  # runtimeConfig "mac", lower case


@dataclasses.dataclass(frozen=True)
class Request:
    """One CNI invocation."""

    command: str
    config: NetConf
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    cni_args: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ips: tuple[IpAddress, ...] = ()  # static addresses asked for (runtimeConfig or CNI_ARGS)
    mac: str | None = None  # the static MAC asked for, lower case

    @property
    def key(self) -> AttachmentKey:
        return AttachmentKey(self.container_id, self.ifname)

    @property
    def is_static(self) -> bool:
        """Whether the request names an address or a MAC (never served from a pool)."""
        return bool(self.ips) or self.mac is not None


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def parse_config(stdin: str | bytes | Mapping[str, Any], *,
                 needs_network: bool = True) -> NetConf:
    """Parse the network configuration (``needs_network``: a ``network`` is required).
    Raises CniError 6 (not JSON), 1 (unsupported cniVersion), 7 (invalid)."""
    raw = _decode(stdin)
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise codes.CniError(codes.INVALID_CONFIG, "the network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise codes.CniError(
            codes.INCOMPATIBLE_VERSION,
            f"kuryr does not support cniVersion {version}",
            f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise codes.CniError(codes.INVALID_CONFIG,
                             f"invalid network name {name!r} in the configuration",
                             "a name starts with a letter or digit, then letters, digits, "
                             "'_', '.' or '-'")
    network = raw.get("network")
    if network is None and not needs_network:
        network = ""
    elif not isinstance(network, str) or (needs_network and not network.strip()):
        raise codes.CniError(codes.INVALID_CONFIG,
                             f"network configuration {name!r} does not name a Neutron network",
                             'add "network": "<Neutron network name or ID>" to the kuryr '
                             "plugin's entry in the conflist")
    return NetConf(
        cni_version=version, name=name, network=network.strip(),
        subnet=_optional_str(raw, "subnet"),
        security_groups=_optional_str_list(raw, "securityGroups"),
        project=_optional_str(raw, "project"),
        mtu=_optional_mtu(raw),
        daemon_socket=_optional_str(raw, "daemonSocket"),
        prev_result=_optional_object(raw, "prevResult"),
        valid_attachments=_valid_attachments(raw),
        runtime_ips=_runtime_ips(raw),
        runtime_mac=_runtime_mac(raw),
    )


def parse_request(environ: Mapping[str, str], stdin: str | bytes | Mapping[str, Any], *,
                  needs_network: bool = True) -> Request:
    """Parse a whole request. Raises CniError 4 (environment), 6, 1, 7 (configuration)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise codes.CniError(codes.INVALID_ENVIRONMENT,
                             f"CNI_COMMAND is {command!r}, not one of {', '.join(COMMANDS)}")
    config = parse_config(stdin, needs_network=needs_network)
    if version_tuple(config.cni_version) < version_tuple(_SINCE[command]):
        raise codes.CniError(codes.INCOMPATIBLE_VERSION,
                             f"{command} needs cniVersion {_SINCE[command]} or later; the "
                             f"configuration says {config.cni_version}")
    if command in ("STATUS", "GC", "VERSION"):
        return Request(command=command, config=config)
    container_id = environ.get("CNI_CONTAINERID", "")
    if not _NAME.match(container_id):
        raise codes.CniError(codes.INVALID_ENVIRONMENT,
                             f"CNI_CONTAINERID {container_id!r} is missing or invalid",
                             "it must start with a letter or digit, then letters, digits, "
                             "'_', '.' or '-'")
    ifname = environ.get("CNI_IFNAME", "")
    if not ifname or len(ifname) > _IFNAMSIZ or any(
            c.isspace() or c in "/:" for c in ifname) or ifname in (".", ".."):
        raise codes.CniError(codes.INVALID_ENVIRONMENT,
                             f"CNI_IFNAME {ifname!r} is missing or not a valid interface name",
                             f"1 to {_IFNAMSIZ} characters without '/', ':' or spaces")
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise codes.CniError(codes.INVALID_ENVIRONMENT, f"CNI_NETNS is required for {command}")
    cni_args = parse_cni_args(environ.get("CNI_ARGS", ""))
    try:
        ips = config.runtime_ips or _args_ips(cni_args)
        mac = config.runtime_mac or _args_mac(cni_args)
    except codes.CniError:
        if command != "DEL":
            raise
        # DEL comes with the ADD's arguments: one refused for a bad address must still clean up.
        ips, mac = config.runtime_ips, config.runtime_mac
    return Request(command=command, config=config, container_id=container_id, netns=netns,
                   ifname=ifname, cni_args=cni_args, ips=ips, mac=mac)


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` into a dict. Raises CniError 4."""
    found: dict[str, str] = {}
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise codes.CniError(codes.INVALID_ENVIRONMENT,
                                 f"CNI_ARGS item {item!r} is not KEY=VALUE")
        found[key] = value
    return found


def parse_ip(text: str) -> IpAddress:
    """An address, with or without a prefix length (``10.0.0.5`` or ``10.0.0.5/24``).
    Raises ValueError."""
    return ipaddress.ip_interface(text.strip()).ip


def _unique_ips(ips: list[IpAddress], where: str, code: int) -> tuple[IpAddress, ...]:
    if len(set(ips)) != len(ips):
        raise codes.CniError(code, f"{where} names an address twice: "
                             f"{', '.join(str(i) for i in ips)}")
    return tuple(ips)


def _runtime_config(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    value = raw.get("runtimeConfig")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise codes.CniError(codes.INVALID_CONFIG, '"runtimeConfig" must be an object')
    return value


def _runtime_ips(raw: Mapping[str, Any]) -> tuple[IpAddress, ...]:
    value = _runtime_config(raw).get("ips")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise codes.CniError(codes.INVALID_CONFIG,
                             f'runtimeConfig "ips" must be a list of addresses, not {value!r}')
    try:
        found = [parse_ip(v) for v in value]
    except ValueError as e:
        raise codes.CniError(codes.INVALID_CONFIG,
                             f'runtimeConfig "ips" has an invalid address: {e}') from e
    return _unique_ips(found, 'runtimeConfig "ips"', codes.INVALID_CONFIG)


def _runtime_mac(raw: Mapping[str, Any]) -> str | None:
    value = _runtime_config(raw).get("mac")
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _is_unicast_mac(value):
        raise codes.CniError(codes.INVALID_CONFIG,
                             f'runtimeConfig "mac" {value!r} is not a unicast MAC address',
                             "six hex pairs separated by ':', the first pair even")
    return value.lower()


def _args_ips(args: Mapping[str, str]) -> tuple[IpAddress, ...]:
    text = args.get("IP", "")
    if not text.strip():
        return ()
    try:
        found = [parse_ip(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise codes.CniError(codes.INVALID_ENVIRONMENT,
                             f"CNI_ARGS IP={text} has an invalid address: {e}") from e
    return _unique_ips(found, f"CNI_ARGS IP={text}", codes.INVALID_ENVIRONMENT)


def _args_mac(args: Mapping[str, str]) -> str | None:
    text = args.get("MAC", "").strip()
    if not text:
        return None
    if not _is_unicast_mac(text):
        raise codes.CniError(codes.INVALID_ENVIRONMENT,
                             f"CNI_ARGS MAC={text} is not a unicast MAC address",
                             "six hex pairs separated by ':', the first pair even")
    return text.lower()


def _is_unicast_mac(text: str) -> bool:
    return bool(_MAC.match(text)) and int(text[:2], 16) & 1 == 0


def _decode(stdin: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(stdin, Mapping):
        return stdin
    try:
        raw = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise codes.CniError(codes.DECODE_FAILURE,
                             f"the network configuration on stdin is not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise codes.CniError(codes.DECODE_FAILURE,
                             "the network configuration on stdin is not a JSON object")
    return raw


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise codes.CniError(codes.INVALID_CONFIG, f'"{key}" must be a string, not {value!r}')
    return value


def _optional_str_list(raw: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise codes.CniError(codes.INVALID_CONFIG,
                             f'"{key}" must be a list of names or IDs, not {value!r}')
    return tuple(value)


def _optional_mtu(raw: Mapping[str, Any]) -> int | None:
    value = raw.get("mtu")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise codes.CniError(codes.INVALID_CONFIG,
                             f'"mtu" must be an integer from 68 to 65535, not {value!r}')
    return value


def _optional_object(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise codes.CniError(codes.INVALID_CONFIG, f'"{key}" must be an object')
    return value


def _valid_attachments(raw: Mapping[str, Any]) -> tuple[AttachmentKey, ...] | None:
    value = raw.get(VALID_ATTACHMENTS)
    if value is None:
        return None
    if not isinstance(value, list):
        raise codes.CniError(codes.INVALID_CONFIG, f'"{VALID_ATTACHMENTS}" must be a list')
    found = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) or \
                not isinstance(item.get("ifname"), str):
            raise codes.CniError(codes.INVALID_CONFIG,
                                 f'"{VALID_ATTACHMENTS}" items need "containerID" and "ifname"',
                                 f"got {item!r}")
        found.append(AttachmentKey(item["containerID"], item["ifname"]))
    return tuple(found)
