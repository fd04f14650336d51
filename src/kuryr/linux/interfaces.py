"""Links inside and outside network namespaces: veth pairs, moving a link into a namespace,
MAC/MTU/addresses/routes, TX checksum offload.

Owns rtnetlink and ethtool; does not know Neutron or OVS. Every function is blocking and short.
Errors are raised as ``kuryr.errors.BindingError`` with the link and namespace named.

The requests of plugging and of a pool hand-over go out on a plain rtnetlink socket (``_Rtnl``),
all those for one namespace in one write, and their acknowledgements are read back together:
pyroute2's ``IPRoute`` runs an event loop per call (about 2 ms to open one and 0.3 ms a request
here, more than the kernel's own work). The kernel handles the messages of one write in order
and acknowledges each. ``describe`` and the ethtool calls still use pyroute2.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
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

# rtnetlink, as <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>.
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLM_F_REPLACE, _NLM_F_EXCL, _NLM_F_CREATE = 0x100, 0x200, 0x400
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK, _RTM_SETLINK = 16, 17, 18, 19
_RTM_NEWADDR, _RTM_NEWROUTE = 20, 24
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_LINKINFO, _IFLA_NET_NS_FD = 1, 3, 4, 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_RT_TABLE_MAIN, _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 4, 0, 1
_IFF_UP = 0x1
_LOOPBACK_INDEX = 1  # the loopback device is index 1 in every namespace
_NETLINK_CAP_ACK = 10  # acknowledgements without a copy of the request
_SOL_NETLINK = 270
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLMSGERR = struct.Struct("=i")
_TIMEOUT = 10.0  # the kernel answers while we write; this only bounds a wedged socket


def check_ifname(ifname: str) -> None:
    """Raises PermanentError when ``ifname`` is not a valid Linux interface name."""
    if not ifname or len(ifname) > IFNAMSIZ or "/" in ifname or ifname in (".", "..") or any(
            c.isspace() or c == ":" for c in ifname):
        raise errors.PermanentError(
            f"invalid interface name {ifname!r}: 1 to {IFNAMSIZ} characters, no '/', ':' or space")


# -- rtnetlink --------------------------------------------------------------------------------
def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _name_attr(ifname: str) -> bytes:
    return _attr(_IFLA_IFNAME, ifname.encode() + b"\0")


def _u32_attr(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _link_msg(index: int = 0, *, up: bool = False, attrs: bytes = b"") -> bytes:
    flags = _IFF_UP if up else 0
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, flags) + attrs


def _family(address: model.IPAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


class _Refused(Exception):
    """The kernel refused a request: ``code`` is its errno."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(f"{what}: {os.strerror(code)}")
        self.code = code


class _Request:
    """One rtnetlink request: its type, flags, body, and what it does (for errors)."""

    __slots__ = ("body", "flags", "ignore", "kind", "what")

    def __init__(self, kind: int, body: bytes, *, what: str, flags: int = 0,
                 ignore: tuple[int, ...] = ()) -> None:
        self.kind = kind
        self.flags = flags
        self.body = body
        self.what = what
        self.ignore = ignore  # error codes that mean "already so"


class _Rtnl:
    """An rtnetlink socket in the host namespace or inside one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0
        sock.settimeout(_TIMEOUT)
        with contextlib.suppress(OSError):  # older kernels: full copies, still correct
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)

    def close(self) -> None:
        self.sock.close()

    def batch(self, requests: Sequence[_Request]) -> None:
        """Send ``requests`` in one write; the kernel runs them in order (a failing one does
        not stop the others). Raises _Refused for the first one that failed, unless its code
        is one it ignores; OSError."""
        if not requests:
            return
        first = self._seq + 1
        data = bytearray()
        for request in requests:
            self._seq += 1
            data += _NLMSGHDR.pack(_NLMSGHDR.size + len(request.body), request.kind,
                                   _NLM_F_REQUEST | _NLM_F_ACK | request.flags, self._seq, 0)
            data += request.body
        self.sock.send(data)
        codes = self._acks(first, len(requests))
        for request, code in zip(requests, codes, strict=True):
            if code and code not in request.ignore:
                raise _Refused(code, request.what)

    def _acks(self, first: int, count: int) -> list[int]:
        codes: dict[int, int] = {}
        while len(codes) < count:
            for kind, seq, payload in _messages(self.sock.recv(65536)):
                if kind == _NLMSG_ERROR and first <= seq < first + count:
                    codes[seq] = -_NLMSGERR.unpack_from(payload)[0]
        return [codes[first + i] for i in range(count)]

    def index(self, ifname: str) -> int | None:
        """The index of the link ``ifname`` here, None if there is none. Raises _Refused,
        OSError."""
        self._seq += 1
        seq = self._seq
        body = _link_msg(attrs=_name_attr(ifname))
        self.sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST,
                                      seq, 0) + body)
        while True:
            for kind, got, payload in _messages(self.sock.recv(65536)):
                if got != seq:
                    continue
                if kind == _NLMSG_ERROR:
                    code = -_NLMSGERR.unpack_from(payload)[0]
                    if code == errno.ENODEV:
                        return None
                    raise _Refused(code, f"looking up {ifname}")
                if kind == _RTM_NEWLINK:
                    return int(_IFINFOMSG.unpack_from(payload)[2])


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in ``data``."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        yield kind, seq, data[offset + _NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


@contextlib.contextmanager
def _rtnl(netns: str | None = None) -> Iterator[_Rtnl]:
    """An rtnetlink socket in the host namespace or in ``netns`` (a name or a path; never
    created). Raises NamespaceNotFoundError."""
    # Made in ``netns`` by this thread (namespaces.socket_in), not by a child process as
    # pyroute2's ``netns=`` does: a fork per socket was most of a pooled ADD.
    try:
        if netns:
            sock = namespaces.socket_in(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                        _NETLINK_ROUTE)
        else:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
    except OSError as e:
        raise errors.NamespaceNotFoundError(f"cannot open network namespace {netns}: {e}") from e
    rtnl = _Rtnl(sock)
    try:
        yield rtnl
    finally:
        rtnl.close()


@contextlib.contextmanager
def _ipr(netns: str | None = None) -> Iterator[Any]:
    """pyroute2's IPRoute in the host namespace or in ``netns``, for reading (``describe``)."""
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


# -- links ------------------------------------------------------------------------------------
def link_exists(ifname: str, *, netns: str | None = None) -> bool:
    with _rtnl(netns) as rtnl:
        try:
            return rtnl.index(ifname) is not None
        except _Refused as e:
            raise errors.BindingError(f"cannot look up link {ifname}: {e}") from e


def create_veth(host_ifname: str, peer_ifname: str, *, mac: str, mtu: int) -> None:
    """Create a veth pair in the host namespace; the peer gets ``mac``, both get ``mtu``, and
    the peer's TX checksum offload is turned off. Raises BindingError."""
    try:
        hw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError as e:
        raise errors.BindingError(f"cannot create veth {host_ifname}/{peer_ifname}: bad MAC "
                                  f"{mac!r}") from e
    peer = _link_msg(attrs=_name_attr(peer_ifname) + _attr(_IFLA_ADDRESS, hw)
                     + _u32_attr(_IFLA_MTU, mtu))
    info = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(
        _IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer))
    body = _link_msg(attrs=_name_attr(host_ifname) + _u32_attr(_IFLA_MTU, mtu)
                     + _attr(_IFLA_LINKINFO, info))
    try:
        with _rtnl() as rtnl:
            rtnl.batch([_Request(_RTM_NEWLINK, body, flags=_NLM_F_CREATE | _NLM_F_EXCL,
                                 what="creating the pair")])
    except _Refused as e:
        raise errors.BindingError(
            f"cannot create veth {host_ifname}/{peer_ifname}: {e}") from e
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
    _move(ifname, netns, new_ifname=new_ifname, source_netns=source_netns)


def move_and_configure(ifname: str, netns: str, *, new_ifname: str,
                       source_netns: str | None = None, mtu: int,
                       addresses: Sequence[model.IPInterface], routes: Sequence[model.Route],
                       gateways: Sequence[model.IPAddress]) -> None:
    """``move_to_netns`` then ``configure``, in one pass: the link is moved, renamed, given
    ``mtu`` and brought up in one request, then ``lo`` is brought up and the addresses and
    routes are added in one write inside ``netns``. The same outcome as the two calls.

    Raises NamespaceNotFoundError, BindingError.
    """
    path = _move(ifname, netns, new_ifname=new_ifname, source_netns=source_netns, mtu=mtu)
    _configure(new_ifname, netns=path, mtu=None, addresses=addresses, routes=routes,
               gateways=gateways)


def _move(ifname: str, netns: str, *, new_ifname: str, source_netns: str | None,
          mtu: int | None = None) -> str:
    """Move (and with ``mtu``, bring up with that MTU) in one request; returns the path of
    ``netns``."""
    path = namespaces.resolve(netns)
    source = namespaces.resolve(source_netns) if source_netns else None
    fd = os.open(path, os.O_RDONLY)
    try:
        with _rtnl(source) as rtnl:
            index = rtnl.index(ifname)
            if index is None:
                raise errors.BindingError(f"link {ifname} vanished before it was moved")
            attrs = _u32_attr(_IFLA_NET_NS_FD, fd) + _name_attr(new_ifname)
            if mtu:
                attrs += _u32_attr(_IFLA_MTU, mtu)
            # The kernel moves and renames the link first, then sets the MTU and flags on it,
            # now in ``netns`` (do_setlink).
            rtnl.batch([_Request(_RTM_SETLINK, _link_msg(index, up=mtu is not None,
                                                         attrs=attrs), what="moving it")])
    except _Refused as e:
        reason = "already exists there" if e.code == errno.EEXIST else e
        raise errors.BindingError(
            f"cannot move {ifname} into {netns} as {new_ifname}: {reason}") from e
    except OSError as e:
        raise errors.BindingError(f"cannot move {ifname} into {netns}: {e}") from e
    finally:
        os.close(fd)
    return path


def set_up(ifname: str, *, mtu: int | None = None, netns: str | None = None) -> None:
    """Bring a link up (optionally setting its MTU). Raises BindingError."""
    attrs = _name_attr(ifname) + (_u32_attr(_IFLA_MTU, mtu) if mtu else b"")
    try:
        with _rtnl(netns) as rtnl:
            rtnl.batch([_Request(_RTM_SETLINK, _link_msg(up=True, attrs=attrs),
                                 what="bringing it up")])
    except _Refused as e:
        if e.code == errno.ENODEV:
            raise errors.BindingError(
                f"no link {ifname} in {netns or 'the host namespace'}") from e
        raise errors.BindingError(f"cannot bring up {ifname}: {e}") from e
    except OSError as e:
        raise errors.BindingError(f"cannot bring up {ifname}: {e}") from e


def configure(ifname: str, *, netns: str, mtu: int, addresses: Sequence[model.IPInterface],
              routes: Sequence[model.Route], gateways: Sequence[model.IPAddress]) -> None:
    """Inside ``netns``: bring ``ifname`` and ``lo`` up with ``mtu``, add every address (no
    duplicate address detection: Neutron owns the address), a default route per gateway and
    the extra routes. Idempotent: what is already there is left as is. Raises BindingError.
    """
    _configure(ifname, netns=netns, mtu=mtu, addresses=addresses, routes=routes,
               gateways=gateways)


def _configure(ifname: str, *, netns: str, mtu: int | None,
               addresses: Sequence[model.IPInterface], routes: Sequence[model.Route],
               gateways: Sequence[model.IPAddress]) -> None:
    """``configure``; ``mtu`` None: the link is up with its MTU already."""
    try:
        with _rtnl(netns) as rtnl:
            index = rtnl.index(ifname)
            if index is None:
                raise errors.BindingError(f"no link {ifname} in {netns}")
            requests = [_Request(_RTM_SETLINK, _link_msg(_LOOPBACK_INDEX, up=True),
                                 what="bringing lo up")]
            if mtu is not None:
                requests.append(_Request(
                    _RTM_SETLINK, _link_msg(index, up=True, attrs=_u32_attr(_IFLA_MTU, mtu)),
                    what=f"bringing {ifname} up"))
            requests += [_address_request(index, a) for a in addresses]
            default = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
            requests += [_route_request(index, default[g.version], g) for g in gateways]
            requests += [_route_request(index, r.destination, r.gateway) for r in routes]
            rtnl.batch(requests)
    except _Refused as e:
        raise errors.BindingError(f"cannot configure {ifname} in {netns}: {e}") from e
    except OSError as e:
        raise errors.BindingError(f"cannot configure {ifname} in {netns}: {e}") from e


def _address_request(index: int, address: model.IPInterface) -> _Request:
    """Add ``address`` (IPv6 without DAD); one already there is success."""
    family = _family(address.ip)
    packed = address.ip.packed
    attrs = _attr(_IFA_ADDRESS, packed) + _u32_attr(
        _IFA_FLAGS, _IFA_F_NODAD if address.version == 6 else 0)
    if family == socket.AF_INET:
        attrs += _attr(_IFA_LOCAL, packed)
    body = _IFADDRMSG.pack(family, address.network.prefixlen, 0, _RT_SCOPE_UNIVERSE,
                           index) + attrs
    return _Request(_RTM_NEWADDR, body, flags=_NLM_F_CREATE | _NLM_F_EXCL,
                    what=f"adding {address}", ignore=(errno.EEXIST,))


def _route_request(index: int, destination: model.IPNetwork,
                   gateway: model.IPAddress) -> _Request:
    """Add or replace the route to ``destination`` via ``gateway`` out of link ``index``."""
    attrs = b""
    if destination.prefixlen:
        attrs += _attr(_RTA_DST, destination.network_address.packed)
    attrs += _attr(_RTA_GATEWAY, gateway.packed) + _u32_attr(_RTA_OIF, index)
    body = _RTMSG.pack(_family(gateway), destination.prefixlen, 0, 0, _RT_TABLE_MAIN,
                       _RTPROT_STATIC, _RT_SCOPE_UNIVERSE, _RTN_UNICAST, 0) + attrs
    return _Request(_RTM_NEWROUTE, body, flags=_NLM_F_CREATE | _NLM_F_REPLACE,
                    what=f"routing {destination} via {gateway}")


def delete_link(ifname: str, *, netns: str | None = None) -> bool:
    """Delete a link; a missing link (or namespace) is success. Returns whether one was deleted.
    Raises BindingError on any other failure."""
    try:
        with _rtnl(netns) as rtnl:
            rtnl.batch([_Request(_RTM_DELLINK, _link_msg(attrs=_name_attr(ifname)),
                                 what="deleting it")])
            return True
    except errors.NamespaceNotFoundError:
        return False
    except _Refused as e:
        if e.code == errno.ENODEV:
            return False
        raise errors.BindingError(f"cannot delete link {ifname}: {e}") from e
    except OSError as e:
        raise errors.BindingError(f"cannot delete link {ifname}: {e}") from e


def describe(ifname: str, *, netns: str | None = None) -> dict[str, Any] | None:
    """What a link looks like: mac, mtu, state, global addresses (``ip/prefix``) and routes
    (``dst via gw``). None if the link does not exist."""
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        index = int(found[0])
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
