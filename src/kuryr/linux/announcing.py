"""Announcing a container's addresses on its link, once it is configured: one gratuitous ARP
per IPv4 address and one unsolicited neighbour advertisement (override flag, target link-layer
address option, to all-nodes ``ff02::1``) per IPv6 address, sent from inside the container's
namespace, as the reference bridge and macvlan CNI plugins do on ADD.

Why: Neutron hands a just-deleted port's address to the next port; a peer that still holds a
REACHABLE neighbour entry with the old MAC keeps sending there, and OVN's ARP/ND responder
answers the newcomer's own requests itself, so without an announcement the peer learns the new
MAC only when its entry goes stale (30 s and more). OVN floods the announcement to the peers.

Owns the frames (built by hand) and the raw ``AF_PACKET`` socket they leave on, made inside the
namespace by the calling thread (``kuryr.linux.namespaces.socket_in``: the thread returns to
its own namespace at once); no ``arping`` or ``ndisc6`` subprocess. ``announce`` is for the
one who just configured the interface; ``announce_when_configured`` for a runtime that
configures it itself later (Docker, after ``Join``): it watches the namespace until the
interface is ready, then announces. Does not configure anything (``kuryr.linux.interfaces``
does) and never fails its caller: an announcement is an optimisation, so every failure is
logged as a warning and swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kuryr import errors, model
from kuryr.linux import namespaces

LOG = logging.getLogger(__name__)

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
_ARPHRD_ETHER = 1
_ARPOP_REQUEST = 1
_BROADCAST = b"\xff" * 6
_ZERO_MAC = b"\x00" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
_ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # 33:33 + the group's low 32 bits (RFC 2464)
_IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LL_ADDR = 2
_SOL_PACKET = 263
# No qdisc between the socket and the driver: right after a veth's carrier comes up the kernel
# attaches the device's qdisc asynchronously (linkwatch), and until then a queued frame is
# dropped without an error; bypassing it, a link without carrier fails the send (ENOBUFS).
_PACKET_QDISC_BYPASS = 20
_NETLINK_ROUTE = 0
_IFF_UP = 0x1
_IFF_LOWER_UP = 0x10000  # carrier
POLL_INTERVAL = 0.02
AGAIN_AFTER = 0.2  # seconds; see announce


def announce(ifname: str, *, netns: str | None, mac: str,
             addresses: Sequence[model.IPInterface],
             again_after: float | None = AGAIN_AFTER) -> None:
    """Send, out of ``ifname`` inside ``netns`` (a name or a path, as
    ``namespaces.resolve`` takes; None: this thread's namespace), one gratuitous ARP request
    for each IPv4 address and one unsolicited neighbour advertisement for each IPv6 address,
    from ``mac``; and the same frames once more ``again_after`` seconds later (None: not), from
    a short-lived thread of their own. Blocking for the first send only, a fraction of a
    millisecond; the calling thread ends in its own namespace.

    Why twice: a frame from a new port that reaches OVS before the node's ovn-controller has
    installed the port's flows is dropped (10 to 12 in 30 sends at the end of the plug here),
    and even one sent just after ``ovn-installed`` is now and then (1 to 3 in 30); a second
    send 30 ms or more later got through every time measured.

    Never raises: a failure (no such namespace or link, a link without carrier, a malformed
    MAC) is logged as a warning and the caller goes on. Peers then learn the new MAC when their
    neighbour entries expire, as they would have without the announcement.
    """
    if not addresses:
        return
    what = ", ".join(str(a.ip) for a in addresses)
    where = netns or "the host namespace"
    started = time.perf_counter()
    try:
        frames = [frame(mac, address.ip) for address in addresses]
        sock = _packet_socket(netns)
    except (OSError, ValueError, errors.KuryrError) as e:
        LOG.warning("cannot announce %s on %s in %s (peers may keep an old MAC for these "
                    "addresses until their neighbour entries expire): %s", what, ifname, where,
                    e)
        return
    try:
        _send(sock, ifname, frames)
    except OSError as e:
        LOG.warning("cannot announce %s on %s in %s (peers may keep an old MAC for these "
                    "addresses until their neighbour entries expire): %s", what, ifname, where,
                    e)
        again_after = None
    LOG.debug("announced %s on %s in %s in %.2f ms", what, ifname, where,
              (time.perf_counter() - started) * 1000)
    _finish_later(sock, ifname, frames, again_after=again_after, what=f"{what} in {where}")


def _send(sock: socket.socket, ifname: str, frames: Sequence[tuple[int, bytes]]) -> None:
    for ethertype, data in frames:
        sock.sendto(data, (ifname, ethertype))


def _finish_later(sock: socket.socket, ifname: str, frames: Sequence[tuple[int, bytes]], *,
                  again_after: float | None, what: str) -> None:
    """Send the frames again after ``again_after`` seconds (if not None), then close the
    socket, on a thread of their own. Closing a packet socket waits for an RCU grace period
    (``packet_release`` calls ``synchronize_net()``: 12 ms measured here), most of what
    announcing would otherwise cost the caller."""

    def finish() -> None:
        try:
            if again_after is not None:
                time.sleep(again_after)
                try:
                    _send(sock, ifname, frames)
                except OSError as e:  # the container may be gone already: nothing to tell
                    LOG.debug("cannot announce %s again on %s: %s", what, ifname, e)
        finally:
            sock.close()

    try:
        threading.Thread(target=finish, name="kuryr-announce", daemon=True).start()
    except RuntimeError:  # no new threads (the interpreter is shutting down)
        sock.close()


async def announce_when_configured(sandbox_key: str, *, mac: str,
                                   addresses: Sequence[model.IPInterface],
                                   timeout: float = 5.0,
                                   interval: float = POLL_INTERVAL) -> bool:
    """Wait until the namespace at ``sandbox_key`` (a path such as Docker's
    ``/var/run/docker/netns/<id>``, or a name) holds a link with ``mac`` that is up, has
    carrier and carries every one of ``addresses``, then ``announce`` them on it. For a
    runtime that moves and configures the interface itself after the plug returns (Docker,
    after ``Join``): run it as a background task and keep a reference to it.

    The namespace's links and addresses are read over one netlink socket every ``interval``
    seconds (a namespace not there yet is looked for again), at most ``timeout`` seconds; a
    read costs 1 to 2 ms of CPU here.
    Returns whether the addresses were announced. Never raises (but CancelledError): a timeout
    or a failure is logged as a warning.
    """
    if not addresses:
        return False
    deadline = time.monotonic() + timeout
    wanted = {a.ip for a in addresses}
    try:
        async with _rtnl_in(sandbox_key, deadline=deadline, interval=interval) as ipr:
            while True:
                ifname = await _configured_link(ipr, mac=mac, wanted=wanted)
                if ifname is not None:
                    await asyncio.to_thread(announce, ifname, netns=sandbox_key, mac=mac,
                                            addresses=addresses)
                    return True
                if time.monotonic() + interval > deadline:
                    break
                await asyncio.sleep(interval)
    except (OSError, NetlinkError, errors.KuryrError) as e:
        LOG.warning("cannot watch %s for the link with MAC %s to announce its addresses: %s",
                    sandbox_key, mac, e)
        return False
    LOG.warning("no link with MAC %s up with %s in %s within %g s: its addresses were not "
                "announced", mac, ", ".join(str(ip) for ip in sorted(wanted, key=str)),
                sandbox_key, timeout)
    return False


def frame(mac: str, address: model.IPAddress) -> tuple[int, bytes]:
    """The Ethernet frame announcing ``address`` at ``mac``, with its EtherType: a gratuitous
    ARP request (IPv4) or an unsolicited neighbour advertisement (IPv6). Raises ValueError
    (a malformed MAC)."""
    hw = _mac_bytes(mac)
    if isinstance(address, ipaddress.IPv4Address):
        return ETH_P_ARP, gratuitous_arp(hw, address)
    return ETH_P_IPV6, neighbour_advertisement(hw, address)


def gratuitous_arp(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """A broadcast ARP request with sender = target = ``address`` (RFC 5227's announcement,
    as the kernel's own ``arp_notify`` sends it: target MAC zero). Receivers update an
    existing entry for ``address`` at once, whatever its state."""
    ip = address.packed
    arp = struct.pack("!HHBBH", _ARPHRD_ETHER, ETH_P_IP, 6, 4, _ARPOP_REQUEST)
    return _BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp + mac + ip + _ZERO_MAC + ip


def neighbour_advertisement(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """An unsolicited neighbour advertisement (RFC 4861 7.2.6) for ``address`` from itself to
    all nodes: override flag set, not solicited, with the target link-layer address option;
    hop limit 255 and the ICMPv6 checksum over the pseudo-header, or receivers drop it."""
    src, dst = address.packed, ALL_NODES.packed
    option = struct.pack("!BB", ND_OPT_TARGET_LL_ADDR, 1) + mac  # length in units of 8 bytes
    icmp = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE) + src + option
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), _IPPROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(pseudo + icmp)) + icmp[4:]
    ipv6 = struct.pack("!IHBB", 6 << 28, len(icmp), _IPPROTO_ICMPV6, 255) + src + dst
    return _ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ipv6 + icmp


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement of the one's complement sum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac_bytes(mac: str) -> bytes:
    hw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(hw) != 6:
        raise ValueError(f"not an Ethernet MAC: {mac!r}")
    return hw


def _packet_socket(netns: str | None) -> socket.socket:
    """A raw packet socket receiving nothing (protocol 0), in ``netns`` or this namespace,
    sending past the qdisc."""
    if netns:
        sock = namespaces.socket_in(namespaces.resolve(netns), socket.AF_PACKET,
                                    socket.SOCK_RAW, 0)
    else:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(_SOL_PACKET, _PACKET_QDISC_BYPASS, 1)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def _rtnl_in(netns: str, *, deadline: float, interval: float) -> AsyncIterator[Any]:
    """An rtnetlink socket inside ``netns``, waiting (until ``deadline``) for the namespace to
    appear. Raises NamespaceNotFoundError when it never does."""
    while True:
        try:
            path = namespaces.resolve(netns)
            sock = await asyncio.to_thread(namespaces.socket_in, path, socket.AF_NETLINK,
                                           socket.SOCK_DGRAM, _NETLINK_ROUTE)
            break
        except errors.NamespaceNotFoundError:
            if time.monotonic() + interval > deadline:
                raise
            await asyncio.sleep(interval)
    try:
        ipr = AsyncIPRoute(fileno=sock.fileno())
    except BaseException:
        sock.close()
        raise
    sock.detach()  # the fd is pyroute2's now; it closes it
    async with ipr:
        yield ipr


async def _configured_link(ipr: Any, *, mac: str, wanted: set[model.IPAddress]) -> str | None:
    """The name of the link with ``mac`` if it is up, has carrier and carries every ``wanted``
    address."""
    mac = mac.lower()
    links = [msg async for msg in await ipr.link("dump")]  # read whole: a dump is one reply
    link = next((m for m in links if str(m.get("IFLA_ADDRESS") or "").lower() == mac), None)
    if link is None or link["flags"] & (_IFF_UP | _IFF_LOWER_UP) != _IFF_UP | _IFF_LOWER_UP:
        return None
    present = set()
    async for msg in await ipr.addr("dump", index=link["index"]):
        value = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if msg["index"] == link["index"] and value:
            present.add(ipaddress.ip_address(value))
    if not wanted <= present:
        return None
    return str(link.get("IFLA_IFNAME"))
