"""The holding namespace: pool ports plugged ahead of their containers, and their hand-over.

A pool port is plugged like any other (veth, OVS port, ``iface-id``) but with its container
end in a namespace of the pool's own (``kuryr-pool``) under ``p<port id[:14]>``, so that
ovn-controller claims it and installs its flows before any container asks. Handing it over
moves that end into the container's namespace, renaming it in the same netlink request,
configures it there and announces its addresses (gratuitous ARP, unsolicited NA): no veth is
made, no OVS row changes but its ``external_ids``, and the port is ready at once. Both the
standalone warm pool (``warm``) and the Kubernetes-mode daemon's pre-plugged pool ports
(``kuryr.daemon.preplugging``) hold ports here.
"""

from __future__ import annotations

from kuryr import model
from kuryr.linux import announcing, interfaces, namespaces

POOL_NETNS = "kuryr-pool"


def pool_ifname(port_id: str) -> str:
    """The container end's name in the holding namespace."""
    return ("p" + port_id)[: interfaces.IFNAMSIZ - 1]


def hand_over(vif: model.VIF, *, pool_netns: str, netns: str, ifname: str) -> None:
    """Move the held interface of ``vif``'s port out of ``pool_netns`` into ``netns`` as
    ``ifname``, configure it there (addresses, routes, ``vif.mtu``) and announce its addresses.
    Blocking (run it in a thread). Raises NamespaceNotFoundError, BindingError, PermanentError
    (a bad ifname)."""
    interfaces.check_ifname(ifname)
    interfaces.move_to_netns(pool_ifname(vif.port_id), netns, new_ifname=ifname,
                             source_netns=pool_netns)
    path = namespaces.resolve(netns)
    addresses = [f.address for f in vif.fixed_ips]
    interfaces.configure(ifname, netns=path, mtu=vif.mtu, addresses=addresses,
                         gateways=vif.gateways(), routes=vif.routes())
    # The port is on OVS and installed already: tell peers its addresses are here now (one
    # may hold a deleted port's MAC for a reused address). Never raises.
    announcing.announce(ifname, netns=path, mac=vif.mac, addresses=addresses)
