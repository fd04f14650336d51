"""Announcing addresses from inside a namespace: a veth joins two fresh namespaces; what
``announce`` sends from one arrives in the other as a gratuitous ARP and an unsolicited
neighbour advertisement a packet capture (a raw socket of the test's own) takes apart, and the
peer's kernel moves its neighbour entries for the addresses to the new MAC."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from kuryr.linux import announcing, interfaces, namespaces
from tests.conftest import RUN_ID, netns_run

pytestmark = pytest.mark.usefixtures("root")

NEW_MAC = "fa:16:3e:aa:bb:01"
OLD_MAC = "fa:16:3e:00:00:99"
V4 = ipaddress.ip_interface("10.83.0.5/24")
V6 = ipaddress.ip_interface("fd00:83::5/64")
PEER_V4 = ipaddress.ip_interface("10.83.0.9/24")
PEER_V6 = ipaddress.ip_interface("fd00:83::9/64")
_ETH_P_ALL = 0x0003


def _veth_names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"tah{suffix}", f"tap{suffix}"


@pytest.fixture
def pair(make_netns: Callable[[], str]) -> Iterator[tuple[str, str]]:
    """(the announcing namespace, its peer): ``eth0`` in each, one veth, configured; the
    announcer's ``eth0`` has NEW_MAC, V4 and V6."""
    ns, peer = make_netns(), make_netns()
    host_end, container_end = _veth_names()
    interfaces.create_veth(host_end, container_end, mac=NEW_MAC, mtu=1500)
    try:
        interfaces.move_to_netns(host_end, peer, new_ifname="eth0")
        interfaces.move_to_netns(container_end, ns, new_ifname="eth0")
        interfaces.configure("eth0", netns=peer, mtu=1500, addresses=[PEER_V4, PEER_V6],
                             gateways=[], routes=[])
        interfaces.configure("eth0", netns=ns, mtu=1500, addresses=[V4, V6], gateways=[],
                             routes=[])
        yield ns, peer
    finally:
        interfaces.delete_link(host_end)  # if still in the host namespace; else with the netns


class Capture:
    """Every frame arriving on ``ifname`` in ``netns``, from a raw socket opened there."""

    def __init__(self, netns: str, ifname: str = "eth0") -> None:
        self.sock = namespaces.socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW,
                                         socket.htons(_ETH_P_ALL))
        self.sock.bind((ifname, _ETH_P_ALL))

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, *predicates: Callable[[bytes], bool],
                 within: float = 2.0) -> list[bytes]:
        """The first frame matching each predicate (fails after ``within`` seconds)."""
        found: dict[int, bytes] = {}
        deadline = time.monotonic() + within
        while len(found) < len(predicates):
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(found)} of {len(predicates)} frames seen"
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            for i, predicate in enumerate(predicates):
                if i not in found and predicate(data):
                    found[i] = data
        return [found[i] for i in range(len(predicates))]


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _is_arp(frame: bytes) -> bool:
    return struct.unpack("!H", frame[12:14])[0] == 0x0806


def _is_na(frame: bytes) -> bool:
    return (struct.unpack("!H", frame[12:14])[0] == 0x86DD and frame[20] == 58
            and frame[54] == 136)


def _ones_complement_sum(data: bytes) -> int:
    # Independent of kuryr's: add big-endian 16-bit words, fold the carries at the end.
    total = 0
    for i in range(0, len(data) - 1, 2):
        total += (data[i] << 8) | data[i + 1]
    if len(data) % 2:
        total += data[-1] << 8
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _check_garp(frame: bytes, *, mac: str, ip: ipaddress.IPv4Address) -> None:
    assert _mac(frame[0:6]) == "ff:ff:ff:ff:ff:ff"
    assert _mac(frame[6:12]) == mac
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4)
    assert op in (1, 2)  # request (what we send) or reply: both are gratuitous here
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    assert _mac(sha) == mac
    assert ipaddress.IPv4Address(spa) == ip
    assert ipaddress.IPv4Address(tpa) == ip


def _check_na(frame: bytes, *, mac: str, ip: ipaddress.IPv6Address) -> None:
    assert _mac(frame[0:6]) == "33:33:00:00:00:01"
    assert _mac(frame[6:12]) == mac
    ipv6, icmp = frame[14:54], frame[54:]
    payload_length, next_header, hop_limit = struct.unpack("!HBB", ipv6[4:8])
    src, dst = ipv6[8:24], ipv6[24:40]
    assert (next_header, hop_limit) == (58, 255)
    assert payload_length == len(icmp) == 32
    assert ipaddress.IPv6Address(dst) == ipaddress.IPv6Address("ff02::1")
    assert ipaddress.IPv6Address(src) == ip
    kind, code, _, flags = struct.unpack("!BBHI", icmp[0:8])
    assert (kind, code) == (136, 0)
    assert flags & 0x20000000, "override flag"
    assert not flags & 0x40000000, "an unsolicited advertisement is not solicited"
    assert ipaddress.IPv6Address(icmp[8:24]) == ip
    assert icmp[24:26] == b"\x02\x01", "target link-layer address option, 8 bytes"
    assert _mac(icmp[26:32]) == mac
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    assert _ones_complement_sum(pseudo + icmp) == 0xFFFF, "ICMPv6 checksum"


def _neighbour(netns: str, ip: object) -> str:
    """The peer's neighbour entry for ``ip``: ``lladdr <mac> <STATE>``, or '' when none."""
    family = "-6" if ":" in str(ip) else "-4"
    shown = netns_run(netns, "ip", family, "neigh", "show", str(ip), "dev", "eth0")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip()


def _set_neighbour(netns: str, ip: object, mac: str, state: str) -> None:
    family = "-6" if ":" in str(ip) else "-4"
    done = netns_run(netns, "ip", family, "neigh", "replace", str(ip), "lladdr", mac, "dev",
                     "eth0", "nud", state)
    assert done.returncode == 0, done.stderr


def _eventually(check: Callable[[], bool], within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_announce_sends_a_gratuitous_arp_and_an_unsolicited_na(
        pair: tuple[str, str]) -> None:
    ns, peer = pair
    own = os.readlink("/proc/thread-self/ns/net")
    capture = Capture(peer)
    try:
        announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4, V6])
        sent = time.monotonic()
        assert os.readlink("/proc/thread-self/ns/net") == own  # back in its own namespace
        garp, na = capture.wait_for(_is_arp, _is_na)
        # And once more, AGAIN_AFTER later (see announcing.announce).
        again = capture.wait_for(_is_arp, _is_na, within=announcing.AGAIN_AFTER + 1.0)
        assert time.monotonic() - sent >= announcing.AGAIN_AFTER * 0.9
        assert again == [garp, na]
        with pytest.raises(AssertionError, match="frames seen"):  # and no more than that
            capture.wait_for(_is_arp, within=announcing.AGAIN_AFTER * 2)
    finally:
        capture.close()
    _check_garp(garp, mac=NEW_MAC, ip=V4.ip)
    _check_na(na, mac=NEW_MAC, ip=V6.ip)


@pytest.mark.parametrize("state", ["reachable", "stale"])
def test_peers_entries_move_to_the_new_mac(pair: tuple[str, str], state: str) -> None:
    """The problem announcing fixes: a peer sure of an old MAC for the address (REACHABLE:
    it would not ask again for a while). With ``arp_accept`` 0 (the default, checked) Linux
    still overrides an existing entry from a gratuitous ARP, and from an NA with the override
    flag; the checksum must be right, or the kernel drops the NA."""
    ns, peer = pair
    assert netns_run(peer, "sysctl", "-n", "net.ipv4.conf.eth0.arp_accept").stdout.strip() == "0"
    for ip in (V4.ip, V6.ip):
        _set_neighbour(peer, ip, OLD_MAC, state)
        assert OLD_MAC in _neighbour(peer, ip)
    # The checksum matters: the same NA with one bit off changes nothing.
    bad = bytearray(announcing.neighbour_advertisement(bytes.fromhex(NEW_MAC.replace(":", "")),
                                                       ipaddress.IPv6Address(V6.ip)))
    bad[56] ^= 0x01  # the ICMPv6 checksum's first byte
    with namespaces.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, 0) as raw:
        raw.sendto(bytes(bad), ("eth0", 0x86DD))
    time.sleep(0.1)
    assert OLD_MAC in _neighbour(peer, V6.ip)
    # One send of each (no second one, to see that the first works).
    announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4, V6], again_after=None)
    for ip in (V4.ip, V6.ip):
        assert _eventually(lambda ip=ip: NEW_MAC in _neighbour(peer, ip)), (  # type: ignore
            f"{ip}: {_neighbour(peer, ip)}")
    # And the peer reaches the address at the new MAC at once.
    for ip in (V4.ip, V6.ip):
        ping = netns_run(peer, "ping", "-c", "1", "-W", "1", str(ip))
        assert ping.returncode == 0, ping.stdout


def test_a_peer_without_an_entry_makes_none(pair: tuple[str, str]) -> None:
    """What is true with the kernel's defaults (``arp_accept`` 0, ``accept_untracked_na``
    0): an announcement updates entries a peer has and creates none, so announcing costs
    peers that never talked to the address nothing."""
    ns, peer = pair
    capture = Capture(peer)
    try:
        announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4, V6])
        capture.wait_for(_is_arp, _is_na)
    finally:
        capture.close()
    time.sleep(0.05)
    assert _neighbour(peer, V4.ip) == ""
    assert _neighbour(peer, V6.ip) == ""


def test_announce_in_the_current_namespace(pair: tuple[str, str]) -> None:
    """netns=None: the calling thread's own namespace (here entered by a child process)."""
    ns, peer = pair
    capture = Capture(peer)
    try:
        code = (f"from kuryr.linux import announcing; import ipaddress; announcing.announce("
                f"'eth0', netns=None, mac={NEW_MAC!r}, addresses=[ipaddress.ip_interface("
                f"{str(V4)!r})])")
        run = netns_run(ns, sys.executable, "-c", code)
        assert run.returncode == 0, run.stderr
        garp, = capture.wait_for(_is_arp)
    finally:
        capture.close()
    _check_garp(garp, mac=NEW_MAC, ip=V4.ip)


def test_failures_are_warnings_never_errors(pair: tuple[str, str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    ns, _ = pair
    caplog.set_level(logging.WARNING, logger="kuryr.linux.announcing")
    own = os.readlink("/proc/thread-self/ns/net")
    announcing.announce("eth0", netns=f"kt-{RUN_ID}-missing", mac=NEW_MAC, addresses=[V4])
    announcing.announce("nosuch0", netns=ns, mac=NEW_MAC, addresses=[V4, V6])
    announcing.announce("eth0", netns=ns, mac="not-a-mac", addresses=[V4])
    announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[])  # nothing to do
    assert os.readlink("/proc/thread-self/ns/net") == own
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert all("cannot announce" in r.getMessage() for r in warnings)


def test_a_link_gone_before_the_second_send_is_no_warning(
        pair: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    ns, _ = pair
    caplog.set_level(logging.DEBUG, logger="kuryr.linux.announcing")
    announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4], again_after=0.1)
    interfaces.delete_link("eth0", netns=ns)  # the container went away at once
    assert _eventually(lambda: any("again" in r.getMessage() and ns in r.getMessage()
                                   for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_link_without_carrier_is_reported_not_silently_dropped(
        pair: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    ns, peer = pair
    subprocess.run(["ip", "netns", "exec", peer, "ip", "link", "set", "eth0", "down"],
                   check=True)
    caplog.set_level(logging.WARNING, logger="kuryr.linux.announcing")
    announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4])
    assert any("cannot announce" in r.getMessage() for r in caplog.records)


def test_announce_is_cheap(pair: tuple[str, str]) -> None:
    """What the caller waits for (the second send and the close are another thread's)."""
    ns, _ = pair
    runs = 50
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(runs):
        announcing.announce("eth0", netns=ns, mac=NEW_MAC, addresses=[V4, V6])
    each = (time.perf_counter() - started) / runs
    time.sleep(announcing.AGAIN_AFTER + 0.2)  # the second sends and the closes are done
    cpu_each = (time.process_time() - cpu) / runs
    print(f"announce(), one IPv4 and one IPv6 address: {each * 1000:.2f} ms for the caller, "
          f"{cpu_each * 1000:.2f} ms CPU in all")
    assert each < 0.005


async def test_announce_when_configured_waits_for_the_runtime(
        make_netns: Callable[[], str]) -> None:
    """As Docker does after Join: the sandbox namespace appears, the interface is moved in,
    renamed and configured some time after the announcer started watching; the announcement
    goes out once it is up with its addresses (and not before)."""
    peer = make_netns()
    sandbox = f"kt-{RUN_ID}-sb{uuid.uuid4().hex[:6]}"
    sandbox_key = str(namespaces.NETNS_RUN_DIR / sandbox)
    host_end, container_end = _veth_names()
    try:
        await asyncio.to_thread(_peer_end, host_end, container_end, peer)
        for ip in (V4.ip, V6.ip):
            _set_neighbour(peer, ip, OLD_MAC, "reachable")
        capture = Capture(peer)
        try:
            started = time.monotonic()
            task = asyncio.create_task(announcing.announce_when_configured(
                sandbox_key, mac=NEW_MAC, addresses=[V4, V6], timeout=5.0))
            await asyncio.sleep(0.1)
            await asyncio.to_thread(namespaces.create, sandbox)
            await asyncio.sleep(0.1)
            # pyroute2's blocking IPRoute cannot run in a thread with a running event loop.
            await asyncio.to_thread(interfaces.move_to_netns, container_end, sandbox_key,
                                    new_ifname="eth0")
            await asyncio.to_thread(interfaces.set_up, "eth0", netns=sandbox_key)  # no address
            await asyncio.sleep(0.1)
            assert not task.done()
            assert OLD_MAC in _neighbour(peer, V4.ip)
            await asyncio.to_thread(interfaces.configure, "eth0", netns=sandbox_key, mtu=1500,
                                    addresses=[V4, V6], gateways=[], routes=[])
            assert await asyncio.wait_for(task, 2.0) is True
            took = time.monotonic() - started
            garp, na = capture.wait_for(_is_arp, _is_na)
        finally:
            capture.close()
        _check_garp(garp, mac=NEW_MAC, ip=V4.ip)
        _check_na(na, mac=NEW_MAC, ip=V6.ip)
        for ip in (V4.ip, V6.ip):
            assert _eventually(lambda ip=ip: NEW_MAC in _neighbour(peer, ip))  # type: ignore
        assert took < 0.3 + 0.2  # 0.3 s of the test's own sleeps, plus a few polls
    finally:
        await asyncio.to_thread(interfaces.delete_link, host_end)
        await asyncio.to_thread(namespaces.remove, sandbox)


def _peer_end(host_end: str, container_end: str, peer: str) -> None:
    interfaces.create_veth(host_end, container_end, mac=NEW_MAC, mtu=1500)
    interfaces.move_to_netns(host_end, peer, new_ifname="eth0")
    interfaces.configure("eth0", netns=peer, mtu=1500, addresses=[PEER_V4, PEER_V6],
                         gateways=[], routes=[])


async def test_announce_when_configured_gives_up_in_time(
        make_netns: Callable[[], str], caplog: pytest.LogCaptureFixture) -> None:
    ns = make_netns()
    caplog.set_level(logging.WARNING, logger="kuryr.linux.announcing")
    started = time.monotonic()
    assert await announcing.announce_when_configured(
        ns, mac=NEW_MAC, addresses=[V4], timeout=0.3) is False
    assert await announcing.announce_when_configured(
        f"/run/netns/kt-{RUN_ID}-never", mac=NEW_MAC, addresses=[V4], timeout=0.3) is False
    assert time.monotonic() - started < 0.3 * 2 + 0.3
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2, messages
