"""Links inside and outside network namespaces: veth pairs, moving a link into a namespace,
MAC/MTU/addresses/routes, TX checksum offload.

Owns netlink (pyroute2) and ethtool; does not know Neutron or OVS. Every function is blocking
and short. Errors are raised as ``kuryr.errors.BindingError`` with the link and namespace named.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.ethtool import Ethtool
from pyroute2.netlink.exceptions import NetlinkError

from kuryr import errors, model
from kuryr.linux import namespaces

IFNAMSIZ = 15
_NETLINK_ROUTE = 0
_IFA_F_NODAD = 0x02
# ethtool feature names of TX checksum offload; with OVS's userspace datapath a veth that
# offloads checksums sends TCP segments that are never completed, so they must be off.
_TX_CSUM_FEATURES = ("tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6",
                     "tx-checksum-sctp")


def check_ifname(ifname: str) -> None:
    """Raises PermanentError when ``ifname`` is not a valid Linux interface name."""
    if not ifname or len(ifname) > IFNAMSIZ or "/" in ifname or ifname in (".", "..") or any(
            c.isspace() or c == ":" for c in ifname):
        raise errors.PermanentError(
            f"invalid interface name {ifname!r}: 1 to {IFNAMSIZ} characters, no '/', ':' or space")


@contextlib.contextmanager
def _ipr(netns: str | None = None) -> Iterator[Any]:
    """An rtnetlink socket in the host namespace or in ``netns`` (a name or a path; never
    created)."""
    # The socket is made in ``netns`` by this thread (namespaces.socket_in), not by a child
    # process as pyroute2's ``netns=`` does: a fork per socket was most of a pooled ADD.
    try:
        if netns:
            sock = namespaces.socket_in(netns, socket.AF_NETLINK, socket.SOCK_DGRAM,
                                        _NETLINK_ROUTE)
            try:
                ipr = IPRoute(fileno=sock.fileno())
            except BaseException:
                sock.close()
                raise
            sock.detach()  # the fd is IPRoute's now; it closes it
        else:
            ipr = IPRoute()
    except OSError as e:
        raise errors.NamespaceNotFoundError(f"cannot open network namespace {netns}: {e}") from e
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def link_exists(ifname: str, *, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, ifname) is not None


def create_veth(host_ifname: str, peer_ifname: str, *, mac: str, mtu: int) -> None:
    """Create a veth pair in the host namespace; the peer gets ``mac``, both get ``mtu``, and
    the peer's TX checksum offload is turned off. Raises BindingError."""
    try:
        with _ipr() as ipr:
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu,
                     peer={"ifname": peer_ifname, "address": mac, "mtu": mtu})
    except NetlinkError as e:
        raise errors.BindingError(
            f"cannot create veth {host_ifname}/{peer_ifname}: {e.args[-1]}") from e
    disable_tx_checksum(peer_ifname)


def disable_tx_checksum(ifname: str) -> None:
    """``ethtool -K <ifname> tx off`` in the host namespace. Raises BindingError."""
    try:
        with Ethtool() as tool:
            features = tool.get_features(ifname)
            changed = False
            for name in _TX_CSUM_FEATURES:
                feature = features.features.get(name)
                if feature is not None and feature.enable:
                    feature.enable = False
                    changed = True
            if changed:
                tool.set_features(ifname, features)
    except (OSError, NetlinkError) as e:
        raise errors.BindingError(f"cannot turn off TX checksum offload on {ifname}: {e}") from e


def tx_checksum_enabled(ifname: str) -> bool:
    """Whether any TX checksum offload is on (host namespace)."""
    with Ethtool() as tool:
        features = tool.get_features(ifname).features
        return any(features[n].enable for n in _TX_CSUM_FEATURES if n in features)


def move_to_netns(ifname: str, netns: str, *, new_ifname: str,
                  source_netns: str | None = None) -> None:
    """Move a link of the host (or of ``source_netns``) into ``netns`` renaming it to
    ``new_ifname`` in the same step. The link arrives down and without addresses.

    Raises NamespaceNotFoundError, or BindingError (e.g. ``new_ifname`` taken there).
    """
    path = namespaces.resolve(netns)
    source = namespaces.resolve(source_netns) if source_netns else None
    fd = os.open(path, os.O_RDONLY)
    try:
        with _ipr(source) as ipr:
            index = _index(ipr, ifname)
            if index is None:
                raise errors.BindingError(f"link {ifname} vanished before it was moved")
            ipr.link("set", index=index, net_ns_fd=fd, ifname=new_ifname)
    except NetlinkError as e:
        reason = "already exists there" if e.code == errno.EEXIST else e.args[-1]
        raise errors.BindingError(
            f"cannot move {ifname} into {netns} as {new_ifname}: {reason}") from e
    finally:
        os.close(fd)


def set_up(ifname: str, *, mtu: int | None = None, netns: str | None = None) -> None:
    """Bring a link up (optionally setting its MTU). Raises BindingError."""
    try:
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname)
            if index is None:
                raise errors.BindingError(f"no link {ifname} in {netns or 'the host namespace'}")
            args: dict[str, Any] = {"state": "up"}
            if mtu:
                args["mtu"] = mtu
            ipr.link("set", index=index, **args)
    except NetlinkError as e:
        raise errors.BindingError(f"cannot bring up {ifname}: {e.args[-1]}") from e


def configure(ifname: str, *, netns: str, mtu: int, addresses: Sequence[model.IPInterface],
              routes: Sequence[model.Route], gateways: Sequence[model.IPAddress]) -> None:
    """Inside ``netns``: bring ``ifname`` and ``lo`` up with ``mtu``, add every address (no
    duplicate address detection: Neutron owns the address), a default route per gateway and
    the extra routes. Idempotent: what is already there is left as is. Raises BindingError.
    """
    try:
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname)
            if index is None:
                raise errors.BindingError(f"no link {ifname} in {netns}")
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
            ipr.link("set", index=index, mtu=mtu, state="up")
            for address in addresses:
                _ignore_exists(ipr.addr, "add", index=index, address=str(address.ip),
                               prefixlen=address.network.prefixlen,
                               flags=_IFA_F_NODAD if address.version == 6 else 0)
            for gateway in gateways:
                family = 10 if gateway.version == 6 else 2
                dst = "::/0" if gateway.version == 6 else "0.0.0.0/0"
                ipr.route("replace", dst=dst, gateway=str(gateway), oif=index, family=family)
            for route in routes:
                ipr.route("replace", dst=str(route.destination), gateway=str(route.gateway),
                          oif=index, family=10 if route.gateway.version == 6 else 2)
    except NetlinkError as e:
        raise errors.BindingError(f"cannot configure {ifname} in {netns}: {e.args[-1]}") from e


def _ignore_exists(call: Any, *args: Any, **kwargs: Any) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def delete_link(ifname: str, *, netns: str | None = None) -> bool:
    """Delete a link; a missing link (or namespace) is success. Returns whether one was deleted.
    Raises BindingError on any other failure."""
    try:
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname)
            if index is None:
                return False
            ipr.link("del", index=index)
            return True
    except errors.NamespaceNotFoundError:
        return False
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return False
        raise errors.BindingError(f"cannot delete link {ifname}: {e.args[-1]}") from e


def describe(ifname: str, *, netns: str | None = None) -> dict[str, Any] | None:
    """What a link looks like: mac, mtu, state, global addresses (``ip/prefix``) and routes
    (``dst via gw``). None if the link does not exist."""
    with _ipr(netns) as ipr:
        index = _index(ipr, ifname)
        if index is None:
            return None
        link = ipr.get_links(index)[0]
        addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                     for a in ipr.get_addr(index=index) if a["scope"] == 0]  # not link-local
        routes = []
        for family in (2, 10):
            for r in ipr.get_routes(family=family, oif=index):
                gateway = r.get_attr("RTA_GATEWAY")
                if gateway is None:
                    continue
                dst = r.get_attr("RTA_DST")
                default = "0.0.0.0/0" if family == 2 else "::/0"
                routes.append(f"{dst}/{r['dst_len']} via {gateway}" if dst else
                              f"{default} via {gateway}")
        return {
            "mac": link.get_attr("IFLA_ADDRESS"),
            "mtu": link.get_attr("IFLA_MTU"),
            "state": link.get_attr("IFLA_OPERSTATE"),
            "addresses": addresses,
            "routes": routes,
        }
