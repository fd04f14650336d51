"""The holding namespace: pool ports plugged ahead of their containers, and their hand-over.

A pool port is plugged like any other (veth, OVS port, ``iface-id``) but with its container
end in a namespace of the pool's own (``kuryr-pool``) under ``p<port id[:14]>``, so that
ovn-controller claims it and installs its flows before any container asks. Handing it over
moves that end into the container's namespace, renaming it in the same netlink request,
configures it there and announces its addresses (gratuitous ARP, unsolicited NA): no veth is
made, no OVS row changes but its ``external_ids``, and the port is ready at once. For a
runtime that moves and configures the interface itself (Docker), ``hand_over_host_side``
moves it into this process's own namespace instead. The standalone warm pool (``warm``, for
the CNI daemon and the Docker driver) and the Kubernetes-mode daemon's pre-plugged pool ports
(``kuryr.daemon.preplugging``) hold their ports here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kuryr import errors, model
from kuryr.binding import ovs as ovs_binding
from kuryr.linux import announcing, interfaces, namespaces

LOG = logging.getLogger(__name__)

POOL_NETNS = "kuryr-pool"
# On the OVS Interface of a port handed over: the owner's tags, comma-separated (tags have no
# commas). Written before the taker answers; gone with the Interface when the port is unplugged.
OWNER_RECORD = "kuryr-pool-owner"
# This process's own network namespace (the main thread's: kuryr never moves it).
HOST_NETNS = "/proc/self/ns/net"


def pool_ifname(port_id: str) -> str:
    """The container end's name in the holding namespace."""
    return ("p" + port_id)[: interfaces.IFNAMSIZ - 1]


def hand_over(vif: model.VIF, *, pool_netns: str, netns: str, ifname: str) -> None:
    """Move the held interface of ``vif``'s port out of ``pool_netns`` into ``netns`` as
    ``ifname``, configure it there (addresses, routes, ``vif.mtu``) and announce its addresses.
    Blocking (run it in a thread). Raises NamespaceNotFoundError, BindingError, PermanentError
    (a bad ifname)."""
    interfaces.check_ifname(ifname)
    addresses = [f.address for f in vif.fixed_ips]
    interfaces.move_and_configure(pool_ifname(vif.port_id), netns, new_ifname=ifname,
                                  source_netns=pool_netns, mtu=vif.mtu, addresses=addresses,
                                  gateways=vif.gateways(), routes=vif.routes())
    path = namespaces.resolve(netns)
    # The port is on OVS and installed already: tell peers its addresses are here now (one
    # may hold a deleted port's MAC for a reused address). Never raises.
    announcing.announce(ifname, netns=path, mac=vif.mac, addresses=addresses)


def hand_over_host_side(port_id: str, *, pool_netns: str, peer_ifname: str) -> None:
    """Move the held interface of ``port_id`` out of ``pool_netns`` into this process's own
    namespace as ``peer_ifname``, for a runtime that moves it into the container and
    configures it itself (Docker's ``Join``): it keeps the port's MAC, MTU and TX checksum
    setting and arrives down and without addresses; its OVS port stays as it is. Idempotent
    (moved already: done). Blocking; run it in a thread. Raises BindingError, PermanentError
    (a bad name)."""
    interfaces.check_ifname(peer_ifname)
    source = pool_ifname(port_id)
    if not interfaces.link_exists(source, netns=pool_netns):
        if interfaces.link_exists(peer_ifname):
            return  # a repeated call: moved already
        raise errors.BindingError(f"port {port_id} has no interface {source} in network "
                                  f"namespace {POOL_NETNS} any more")
    interfaces.delete_link(peer_ifname)  # a leftover of an earlier plug of this port
    interfaces.move_to_netns(source, HOST_NETNS, new_ifname=peer_ifname,
                             source_netns=pool_netns)
    LOG.info("port %s handed over as %s", port_id, peer_ifname)


def record(binder: ovs_binding.OvsBinder, port_id: str, owner_tags: Sequence[str]) -> None:
    """Record on the port's OVS Interface whom it was handed to (blocking: one OVSDB
    transaction). Raises BindingError."""
    binder.ovsdb.set_external_ids(ovs_binding.host_ifname(port_id),
                                  {OWNER_RECORD: ",".join(owner_tags)})


def records(binder: ovs_binding.OvsBinder) -> dict[str, list[str]]:
    """Port ID -> the owner tags recorded at its hand-over (blocking). Raises BindingError."""
    return {port_id: ids[OWNER_RECORD].split(",")
            for port_id, ids in binder.owned_ports().items() if ids.get(OWNER_RECORD)}


def whereabouts(port_id: str, *, pool_netns: str) -> tuple[bool, bool]:
    """(in the holding namespace, plugged outside it): the pool end of the port's veth is in
    ``pool_netns``; its host end (the OVS port's tap) exists while the other end is anywhere,
    a container's namespace included. Blocking."""
    in_pool = interfaces.link_exists(pool_ifname(port_id), netns=pool_netns)
    tapped = interfaces.link_exists(ovs_binding.host_ifname(port_id))
    return in_pool, tapped and not in_pool
