"""Links in real network namespaces: a veth moved into a namespace carries the MAC, MTU,
addresses and routes asked for, with TX checksum offload off, and packets cross it."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import uuid
from collections.abc import Callable

import pytest

from kuryr import errors, model
from kuryr.linux import interfaces, namespaces
from tests.conftest import netns_run

pytestmark = pytest.mark.usefixtures("root")


def _names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"tkh{suffix}", f"tkp{suffix}"


def test_veth_into_namespace_is_configured(make_netns: Callable[[], str]) -> None:
    ns = make_netns()
    host, peer = _names()
    try:
        interfaces.create_veth(host, peer, mac="fa:16:3e:12:34:56", mtu=1442)
        assert not interfaces.tx_checksum_enabled(peer)
        interfaces.move_to_netns(peer, ns, new_ifname="eth0")
        for _ in range(2):  # idempotent
            interfaces.configure(
                "eth0", netns=ns, mtu=1442,
                addresses=[ipaddress.ip_interface("10.77.0.5/24"),
                           ipaddress.ip_interface("fd00:77::5/64")],
                gateways=[ipaddress.ip_address("10.77.0.1"), ipaddress.ip_address("fd00:77::1")],
                routes=[model.Route(ipaddress.ip_network("10.78.0.0/16"),
                                    ipaddress.ip_address("10.77.0.254"))])
        seen = interfaces.describe("eth0", netns=ns)
        assert seen is not None
        assert seen["mac"] == "fa:16:3e:12:34:56"
        assert seen["mtu"] == 1442
        assert sorted(seen["addresses"]) == ["10.77.0.5/24", "fd00:77::5/64"]
        assert sorted(seen["routes"]) == ["0.0.0.0/0 via 10.77.0.1",
                                          "10.78.0.0/16 via 10.77.0.254", "::/0 via fd00:77::1"]
        # What a user would check with ethtool inside the namespace.
        ethtool = netns_run(ns, "ethtool", "-k", "eth0").stdout
        assert "tx-checksumming: off" in ethtool
        assert not interfaces.link_exists(peer)  # moved, not copied
    finally:
        interfaces.delete_link(host)
    assert not interfaces.link_exists("eth0", netns=ns)  # the peer went with its host end


def test_packets_cross_a_veth_between_two_namespaces(make_netns: Callable[[], str]) -> None:
    a, b = make_netns(), make_netns()
    host, peer = _names()
    interfaces.create_veth(host, peer, mac="fa:16:3e:00:00:0a", mtu=1500)
    interfaces.move_to_netns(host, a, new_ifname="eth0")
    interfaces.move_to_netns(peer, b, new_ifname="eth0")
    for ns, ip in ((a, "10.79.0.1"), (b, "10.79.0.2")):
        interfaces.configure("eth0", netns=ns, mtu=1500, gateways=[], routes=[],
                             addresses=[ipaddress.ip_interface(f"{ip}/24")])
    ping = netns_run(a, "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.79.0.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    interfaces.delete_link("eth0", netns=a)
    assert not interfaces.link_exists("eth0", netns=b)


def test_missing_namespace_is_a_clear_error_and_nothing_is_left() -> None:
    host, peer = _names()
    interfaces.create_veth(host, peer, mac="fa:16:3e:00:00:0b", mtu=1500)
    try:
        with pytest.raises(errors.NamespaceNotFoundError, match="kt-does-not-exist"):
            interfaces.move_to_netns(peer, "kt-does-not-exist", new_ifname="eth0")
        assert not namespaces.exists("kt-does-not-exist")  # never created by accident
    finally:
        interfaces.delete_link(host)
    assert not interfaces.link_exists(peer)


def test_plain_file_is_not_a_namespace(tmp_path: object) -> None:
    path = f"{tmp_path}/not-a-netns"
    with open(path, "w"):
        pass
    with pytest.raises(errors.NamespaceNotFoundError, match="not a network namespace"):
        namespaces.resolve(path)


def test_delete_is_idempotent() -> None:
    host, _ = _names()
    assert interfaces.delete_link(host) is False
    assert interfaces.delete_link("eth0", netns="kt-does-not-exist") is False


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "eth 0"])
def test_bad_interface_names_are_refused(name: str) -> None:
    with pytest.raises(errors.PermanentError, match="invalid interface name"):
        interfaces.check_ifname(name)


def test_name_taken_in_namespace_is_reported(make_netns: Callable[[], str]) -> None:
    ns = make_netns()
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "add", "eth0", "type", "veth",
                    "peer", "name", "x0"], check=True)
    host, peer = _names()
    interfaces.create_veth(host, peer, mac="fa:16:3e:00:00:0c", mtu=1500)
    try:
        with pytest.raises(errors.BindingError, match="already exists"):
            interfaces.move_to_netns(peer, ns, new_ifname="eth0")
    finally:
        interfaces.delete_link(host)


def test_socket_in_a_namespace_leaves_the_thread_in_its_own(
        make_netns: Callable[[], str]) -> None:
    """``namespaces.socket_in`` (no child process): the socket lives in the namespace, the
    calling thread is back in its own, and a missing namespace is a clear error."""
    own = os.readlink("/proc/thread-self/ns/net")
    ns = make_netns()
    with namespaces.socket_in(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, 0):
        assert os.readlink("/proc/thread-self/ns/net") == own
    seen = interfaces.describe("lo", netns=ns)  # a fresh namespace's lo: down, not the host's
    assert seen is not None and seen["state"] == "DOWN"
    with pytest.raises(errors.NamespaceNotFoundError):
        namespaces.socket_in("kt-no-such-namespace", socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    assert os.readlink("/proc/thread-self/ns/net") == own


def test_move_and_configure_in_one_pass_is_the_same_as_both_calls(
        make_netns: Callable[[], str]) -> None:
    """A pool's hand-over: the link leaves one namespace for another, renamed, up with its MTU,
    addresses and routes, as ``move_to_netns`` then ``configure`` leave it; a name taken there
    is refused."""
    holding, target = make_netns(), make_netns()
    (host, peer), (other_host, other_peer) = _names(), _names()
    interfaces.create_veth(host, peer, mac="fa:16:3e:12:34:57", mtu=1500)
    interfaces.create_veth(other_host, other_peer, mac="fa:16:3e:12:34:58", mtu=1500)
    try:
        interfaces.move_to_netns(peer, holding, new_ifname="pheld")
        interfaces.move_to_netns(other_peer, holding, new_ifname="pother")
        interfaces.set_up(host)
        gateways = [ipaddress.ip_address("10.77.0.1"), ipaddress.ip_address("fd00:77::1")]
        addresses = [ipaddress.ip_interface("10.77.0.5/24"),
                     ipaddress.ip_interface("fd00:77::5/64")]
        routes = [model.Route(ipaddress.ip_network("10.78.0.0/16"),
                              ipaddress.ip_address("10.77.0.254"))]
        interfaces.move_and_configure("pheld", target, new_ifname="eth0", source_netns=holding,
                                      mtu=1442, addresses=addresses, gateways=gateways,
                                      routes=routes)
        seen = interfaces.describe("eth0", netns=target)
        assert seen is not None
        assert (seen["mac"], seen["mtu"], seen["state"]) == ("fa:16:3e:12:34:57", 1442, "UP")
        assert sorted(seen["addresses"]) == ["10.77.0.5/24", "fd00:77::5/64"]
        assert sorted(seen["routes"]) == ["0.0.0.0/0 via 10.77.0.1",
                                          "10.78.0.0/16 via 10.77.0.254", "::/0 via fd00:77::1"]
        lo = interfaces.describe("lo", netns=target)
        assert lo is not None and lo["state"] == "UNKNOWN"  # up (a loopback has no carrier)
        assert not interfaces.link_exists("pheld", netns=holding)
        assert "nodad" in netns_run(target, "ip", "-6", "addr", "show", "eth0").stdout
        assert "tx-checksumming: off" in netns_run(target, "ethtool", "-k", "eth0").stdout
        with pytest.raises(errors.BindingError, match="already exists"):
            interfaces.move_and_configure("pother", target, new_ifname="eth0",
                                          source_netns=holding, mtu=1442, addresses=addresses,
                                          gateways=gateways, routes=routes)
    finally:
        interfaces.delete_link(host)
        interfaces.delete_link(other_host)
