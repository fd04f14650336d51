"""The NetworkPolicy prober against real network namespaces, without Neutron: pod namespaces on
a Linux bridge (in a namespace of its own), one agent each; every pair probed over TCP and UDP
on 80 and 81, first with nothing in the way, then with firewall rules inside pod namespaces
(nftables, else iptables) that the matrix must show exactly. Everything is torn down whatever
happens: the agents by the prober, the namespaces (and so the veths and the bridge) by
``make_netns``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable

import pytest

from tests.conftest import unavailable
from tests.support.netpol import layout, matrix, prober

pytestmark = pytest.mark.usefixtures("root")

CASES = [(80, "TCP"), (80, "UDP"), (81, "TCP"), (81, "UDP")]


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"ip {' '.join(argv)}: {done.stderr}"


def _bridged(make_netns: Callable[[], str], keys: Iterable[str]) -> list[prober.Endpoint]:
    """One namespace per key, its eth0 a veth whose peer is on a bridge in a namespace of its
    own (so no link is ever made in the host's namespace: nothing to collide or leak)."""
    bridge = make_netns()
    _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
    _ip("-n", bridge, "link", "set", "br0", "up")
    made = []
    for i, key in enumerate(keys):
        netns = make_netns()
        address = f"10.200.0.{10 + i}"
        _ip("-n", bridge, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
            "netns", netns)
        _ip("-n", bridge, "link", "set", f"p{i}", "master", "br0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        made.append(prober.Endpoint(key, netns, address))
    return made


Rule = tuple[str | None, int | None, str]  # (protocol, port, "drop" | "reject")


def _firewall() -> str:
    for tool in ("nft", "iptables"):
        if shutil.which(tool):
            return tool
    unavailable("neither nft nor iptables is installed: no firewall rule to probe against")
    raise AssertionError("unreachable")


def _block(tool: str, netns: str, rules: list[Rule]) -> None:
    """Inside ``netns``, ``rules`` on incoming traffic not from ``lo`` (a pod's traffic to
    itself stays allowed, as Kubernetes has it)."""
    if tool == "nft":
        lines = []
        for protocol, port, verdict in rules:
            match = f"{protocol.lower()} dport {port}" if protocol and port else (
                f"meta l4proto {protocol.lower()}" if protocol else "")
            action = ("reject with tcp reset" if verdict == "reject" and protocol == "TCP"
                      else "reject" if verdict == "reject" else "drop")
            lines.append(f'  iifname != "lo" {match} {action}')
        script = ("table inet kt_netpol {\n chain input {\n"
                  "  type filter hook input priority 0; policy accept;\n"
                  + "\n".join(lines) + "\n }\n}\n")
        done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script,
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, f"nft: {done.stderr}\n{script}"
        return
    for protocol, port, verdict in rules:
        argv = ["-A", "INPUT", "!", "-i", "lo"]
        if protocol:
            argv += ["-p", protocol.lower()]
        if port:
            argv += ["--dport", str(port)]
        argv += (["-j", "REJECT", "--reject-with", "tcp-reset"]
                 if verdict == "reject" and protocol == "TCP"
                 else ["-j", "REJECT"] if verdict == "reject" else ["-j", "DROP"])
        done = subprocess.run(["ip", "netns", "exec", netns, "iptables", *argv],
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, f"iptables {argv}: {done.stderr}"


def _expected(keys: list[str], denied: Callable[[str, str, int, str], bool]) -> matrix.Matrix:
    return matrix.Matrix.build(keys, keys, CASES,
                               lambda s, d, port, protocol: not denied(s, d, port, protocol))


def _report(what: str, probed: prober.Prober) -> None:
    run = probed.last_run
    assert run is not None
    print(f"\n{what}: {run.probes} probes in {run.seconds:.2f} s ({run.retried} retried)")


async def test_all_pairs_of_three_pods_are_allowed(make_netns: Callable[[], str]) -> None:
    pods = _bridged(make_netns, ["x/a", "y/a", "z/a"])
    keys = [p.key for p in pods]
    async with prober.Prober() as probing:
        await probing.start(pods)
        observed = await probing.probe_all(ports=(80, 81), protocols=("TCP", "UDP"))
        _report("3 pods, all allowed", probing)
    found = matrix.diff(_expected(keys, lambda *_: False), observed)
    assert not found, found.render()
    assert observed.count(True) == 36
    assert not observed.notes, observed.notes  # every probe answered at the first attempt


async def test_firewall_rules_show_in_exactly_their_cells(
        make_netns: Callable[[], str]) -> None:
    tool = _firewall()
    pods = _bridged(make_netns, ["x/a", "y/a", "z/a"])
    keys = [p.key for p in pods]
    by_key = {p.key: p for p in pods}
    # A silent drop of TCP 81 into y/a, of UDP 80 into z/a; a TCP reset on 80 from x/a.
    _block(tool, by_key["y/a"].netns, [("TCP", 81, "drop")])
    _block(tool, by_key["z/a"].netns, [("UDP", 80, "drop")])
    _block(tool, by_key["x/a"].netns, [("TCP", 80, "reject")])
    blocked = {("y/a", 81, "TCP"), ("z/a", 80, "UDP"), ("x/a", 80, "TCP")}
    async with prober.Prober() as probing:
        await probing.start(pods)
        observed = await probing.probe_all(ports=(80, 81), protocols=("TCP", "UDP"))
        _report(f"3 pods, 3 rules ({tool})", probing)
    expected = _expected(keys, lambda s, d, port, protocol:
                         s != d and (d, port, protocol) in blocked)
    found = matrix.diff(expected, observed)
    assert not found, found.render()
    # Denials are judged after the retry; drops time out, the reset is refused at once.
    assert observed.notes[("x/a", "y/a", 81, "TCP")] == "timeout, timeout"
    assert observed.notes[("x/a", "z/a", 80, "UDP")] == "timeout, timeout"
    assert observed.notes[("y/a", "x/a", 80, "TCP")] == "refused, refused"
    print(observed.render())


async def test_the_upstream_layout_is_probed_in_a_few_seconds(
        make_netns: Callable[[], str]) -> None:
    """9 pods x 9 pods x 4 port/protocol cases = 324 probes, all allowed; then with every
    pod dropping everything but its own traffic (288 denials, each costing two timeouts),
    the worst case."""
    grid = layout.Layout()
    pods = _bridged(make_netns, grid.keys())
    keys = [p.key for p in pods]
    async with prober.Prober(timeout=1.0) as probing:
        await probing.start(pods)
        observed = await probing.probe_all(ports=grid.ports, protocols=grid.protocols)
        _report("9 pods, all allowed", probing)
        found = matrix.diff(_expected(keys, lambda *_: False), observed)
        assert not found, found.render()
        assert probing.last_run is not None and probing.last_run.seconds < 3
        tool = _firewall()
        for pod in pods:
            _block(tool, pod.netns, [(None, None, "drop")])
        observed = await probing.probe_all(ports=grid.ports, protocols=grid.protocols)
        _report(f"9 pods, all denied but self ({tool})", probing)
        found = matrix.diff(_expected(keys, lambda s, d, *_: s != d), observed)
        assert not found, found.render()
        # Every denial waited for both attempts, all at once: two timeouts and a margin.
        assert probing.last_run is not None and probing.last_run.seconds < 2 * 1.0 + 2


async def test_agents_are_killed_on_close_even_after_a_failed_start(
        make_netns: Callable[[], str]) -> None:
    pods = _bridged(make_netns, ["x/a", "y/a"])
    missing = prober.Endpoint("z/a", "kt-no-such-netns", "10.200.0.99")
    probing = prober.Prober()
    with pytest.raises(prober.ProbeError, match="z/a"):
        await probing.start([*pods, missing])
    assert probing.agents == {}  # start() closed what it had started
    assert all(not _pids(p.netns) for p in pods)
    with pytest.raises(ValueError, match="serves no"):
        async with prober.Prober() as probing:
            await probing.start(pods)
            assert all(_pids(p.netns) for p in pods)
            await probing.probe_all(ports=(82,))
    assert all(not _pids(p.netns) for p in pods)


def _pids(netns: str) -> list[str]:
    """The processes in a namespace (``ip netns pids``)."""
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          timeout=20)
    return done.stdout.split()
