"""The provider network of floating IPs on the local cloud, made idempotently by ``up``: the OVS
bridge ``br-ex`` mapped to the physical network ``public``, Neutron's external network
``kuryr-public`` with its subnet, the router ``kuryr-router`` with its gateway there, and the
"outside" network namespace ``kuryr-outside`` whose veth is plugged on ``br-ex`` holding the
external gateway address: from there floating IPs are reachable as from outside the cloud.

Owns those names, addresses and Neutron requests (plain REST with urllib under noauth, found
by name before anything is created; ``neutron_request`` also serves ``provisioning``). Does
not start daemons; needs Open vSwitch and a healthy Neutron.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from kuryr import errors
from kuryr.cloud import CloudError, commands, layout, rendering
from kuryr.linux import interfaces, namespaces

NETWORK_NAME = "kuryr-public"
SUBNET_NAME = "kuryr-public-subnet"
ROUTER_NAME = "kuryr-router"
CIDR = ipaddress.ip_network("198.51.100.0/24")
GATEWAY = ipaddress.ip_address("198.51.100.1")
POOL = ("198.51.100.10", "198.51.100.200")
OUTSIDE_MTU = 1500
# Locally administered: never one of Neutron's fa:16:3e addresses.
OUTSIDE_MAC = "02:6b:75:72:00:01"
REQUEST_TIMEOUT = 30.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class OutsideState:
    """What ``outside_state`` found of the outside namespace."""

    present: bool
    detail: str


def ensure_bridge_mappings(cloud: layout.CloudLayout) -> None:
    """``br-ex`` (userspace datapath), mapped as ``public``, and this chassis a gateway.

    Needs ovsdb-server. Raises CloudError when ovs-vsctl fails.
    """
    bridge = layout.EXTERNAL_BRIDGE
    commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--no-wait", "--timeout=10",
                  "--", "--may-exist", "add-br", bridge,
                  "--", "set", "Bridge", bridge, "datapath_type=netdev",
                  "--", "set", "Open_vSwitch", ".",
                  f'external_ids:ovn-bridge-mappings="{layout.PHYSICAL_NETWORK}:{bridge}"',
                  'external_ids:ovn-cms-options="enable-chassis-as-gw"'],
                 step=f"creating the bridge {bridge}", log=cloud.log("ovs-vsctl"),
                 env=cloud.tool_environment())


def ensure_network(cloud: layout.CloudLayout) -> str:
    """The external network, its subnet and the router with its gateway on it, each found by
    name or created; the network's id, also written to ``external_network_file``.

    Raises CloudError when Neutron refuses.
    """
    network = _find("networks", name=NETWORK_NAME)
    if network is None:
        network = neutron_request("POST", "networks", {"network": {
            "name": NETWORK_NAME, "router:external": True, "shared": False,
            "provider:network_type": "flat",
            "provider:physical_network": layout.PHYSICAL_NETWORK}})["network"]
    network_id = str(network["id"])
    if _find("subnets", name=SUBNET_NAME, network_id=network_id) is None:
        neutron_request("POST", "subnets", {"subnet": {
            "name": SUBNET_NAME, "network_id": network_id, "ip_version": 4,
            "cidr": str(CIDR), "gateway_ip": str(GATEWAY), "enable_dhcp": False,
            "allocation_pools": [{"start": POOL[0], "end": POOL[1]}]}})
    gateway = {"network_id": network_id}
    router = _find("routers", name=ROUTER_NAME)
    if router is None:
        neutron_request("POST", "routers", {"router": {"name": ROUTER_NAME,
                                                "external_gateway_info": gateway}})
    elif (router.get("external_gateway_info") or {}).get("network_id") != network_id:
        neutron_request("PUT", f"routers/{router['id']}",
                 {"router": {"external_gateway_info": gateway}})
    if rendering.external_network_id(cloud) != network_id:
        cloud.external_network_file.write_text(network_id + "\n", encoding="utf-8")
    return network_id


def ensure_outside(cloud: layout.CloudLayout) -> bool:
    """The outside namespace with its veth on ``br-ex`` holding the gateway address; True
    when something had to be made. Raises CloudError."""
    host, inside, netns = layout.OUTSIDE_HOST_IFNAME, layout.OUTSIDE_IFNAME, layout.OUTSIDE_NETNS
    step = f"making the outside namespace {netns}"
    made = False
    try:
        namespaces.create(netns)
        if not interfaces.link_exists(inside, netns=netns):
            interfaces.delete_link(host)
            peer = f"{host[:10]}-peer"
            interfaces.create_veth(host, peer, mac=OUTSIDE_MAC, mtu=OUTSIDE_MTU)
            interfaces.move_to_netns(peer, netns, new_ifname=inside)
            made = True
        interfaces.configure(
            inside, netns=netns, mtu=OUTSIDE_MTU,
            addresses=[ipaddress.ip_interface(f"{GATEWAY}/{CIDR.prefixlen}")], routes=[],
            gateways=[])
        interfaces.set_up(host, mtu=OUTSIDE_MTU)
    except errors.KuryrError as e:
        raise commands.failure(step, str(e), None) from e
    commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--timeout=10",
                  "--", "--may-exist", "add-port", layout.EXTERNAL_BRIDGE, host,
                  "--", "set", "Interface", host, "external_ids:owner=kuryr-cloud"],
                 step=step, log=cloud.log("ovs-vsctl"), env=cloud.tool_environment())
    return made


def remove_outside(cloud: layout.CloudLayout, *, switch_running: bool) -> bool:
    """Remove the outside namespace and its veth (and its port on ``br-ex`` when Open vSwitch
    runs); True when there was something. Raises CloudError."""
    host = layout.OUTSIDE_HOST_IFNAME
    found = namespaces.exists(layout.OUTSIDE_NETNS)
    if switch_running:
        commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--timeout=10",
                      "--if-exists", "del-port", layout.EXTERNAL_BRIDGE, host],
                     step="unplugging the outside namespace", log=cloud.log("ovs-vsctl"),
                     env=cloud.tool_environment())
    try:
        found |= interfaces.delete_link(host)
        namespaces.remove(layout.OUTSIDE_NETNS)
    except (errors.KuryrError, OSError) as e:
        raise commands.failure("removing the outside namespace", str(e), None) from e
    return found


def outside_state() -> OutsideState:
    """Whether the outside namespace is there with the gateway address. Raises nothing."""
    netns, inside = layout.OUTSIDE_NETNS, layout.OUTSIDE_IFNAME
    if not namespaces.exists(netns):
        return OutsideState(False, f"no network namespace {netns}")
    try:
        link = interfaces.describe(inside, netns=netns)
        plugged = interfaces.link_exists(layout.OUTSIDE_HOST_IFNAME)
    except (errors.KuryrError, OSError) as e:
        return OutsideState(False, f"cannot look into {netns}: {e}")
    wanted = f"{GATEWAY}/{CIDR.prefixlen}"
    if link is None or wanted not in link["addresses"]:
        return OutsideState(False, f"{netns} lacks {wanted} on {inside}")
    if not plugged:
        return OutsideState(False, f"{netns}'s veth {layout.OUTSIDE_HOST_IFNAME} is gone")
    return OutsideState(True, f"{netns}: {wanted} on {inside}, plugged on "
                              f"{layout.EXTERNAL_BRIDGE}")


def _find(collection: str, **query: str) -> dict[str, Any] | None:
    found = neutron_request("GET", f"{collection}?{urllib.parse.urlencode(query)}")[collection]
    return found[0] if found else None


def neutron_request(method: str, path: str,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the local Neutron (noauth: every request is admin), ``path`` under
    ``/v2.0/``; its JSON answer. Raises CloudError naming the request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{layout.NEUTRON_URL}v2.0/{path}", data=data, method=method,
        headers={"Accept": "application/json", "Content-Type": "application/json"})
    step = f"Neutron {method} /v2.0/{path.partition('?')[0]}"
    try:
        with _OPENER.open(request, timeout=REQUEST_TIMEOUT) as response:
            answer: Any = json.load(response)
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise CloudError(f"{step} failed: HTTP {e.code}: {detail}") from e
    except (OSError, ValueError) as e:
        raise CloudError(f"{step} failed: {getattr(e, 'reason', e)}") from e
    if not isinstance(answer, dict):
        raise CloudError(f"{step} failed: unexpected answer {answer!r:.200}")
    return answer
