"""``kuryr connectivity-test`` in standalone mode: two network namespaces of its own on a
Neutron network of its own, each on a port plugged by ``kuryr.ports.lifecycle.attach`` (what
the CNI daemon does for a container), then ping and TCP both ways, and a security group that
must block. Everything it made (ports, veths and OVS ports, namespaces, the security groups,
subnet and network) is removed afterwards, also on failure or cancellation (Ctrl-C).

Owns the test's resources and its steps; does not own how results are printed
(``kuryr.cli.connectivity``). TCP runs a small standard-library echo server in one namespace
and a client in the other (this interpreter, ``-c``), as ``ip netns exec`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from kuryr import binding, errors, settings
from kuryr.linux import namespaces
from kuryr.neutron import client, tagging
from kuryr.ports import lifecycle

TAG = tagging.owner("connectivity-test", "run")
TCP_PORT = 5201
SET_UP = "set-up (network, 2 ports plugged and ready)"
_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
s.settimeout(float(sys.argv[2])); c, _ = s.accept(); c.settimeout(float(sys.argv[2]))
while True:
    data = c.recv(65536)
    if not data:
        break
    c.sendall(data)
"""
_ECHO_CLIENT = """
import socket, sys
n, timeout = int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=timeout)
payload = bytes(range(256)) * (n // 256); c.sendall(payload); c.shutdown(socket.SHUT_WR)
got = 0
while got < len(payload):
    data = c.recv(65536)
    if not data:
        break
    got += len(data)
print(f"sent={len(payload)} received={got}")
"""


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    is_passed: bool
    seconds: float
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.is_passed,
                "seconds": round(self.seconds, 3), "detail": self.detail}


def _ping(netns: str, address: str, *, count: int = 2) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
            address]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _ping_until(netns: str, address: str, *, expect: bool, within: float) -> bool:
    """Whether ping gave ``expect`` within ``within`` s (flows and ACLs take a moment)."""
    deadline = time.monotonic() + within
    while True:
        if _ping(netns, address, count=1) == expect:
            return True
        if time.monotonic() > deadline:
            return False


def _tcp(server_ns: str, client_ns: str, address: str, *, nbytes: int = 1_048_576,
         timeout: float = 5.0) -> tuple[bool, str]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-I", "-c", _ECHO_SERVER,
         str(TCP_PORT), str(timeout + 5)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            return False, "echo server did not start"
        done = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, "-I", "-c", _ECHO_CLIENT,
             address, str(TCP_PORT), str(nbytes), str(timeout)],
            capture_output=True, text=True, timeout=timeout + 30)
        errors_said = done.stderr.strip().splitlines()
        said = done.stdout.strip() or (errors_said[-1] if errors_said else "?")
        return done.returncode == 0 and said == f"sent={nbytes} received={nbytes}", said
    finally:
        server.kill()
        server.wait()


async def _timed(name: str, check: Callable[[], Awaitable[tuple[bool, str]]]) -> Result:
    started = time.monotonic()
    try:
        ok, detail = await check()
    except Exception as e:  # a step that raises has failed; the next steps still run
        ok, detail = False, f"{type(e).__name__}: {e}"
    return Result(name, ok, time.monotonic() - started, detail)


async def run(config: settings.KuryrSettings, *, cidr: str = "10.213.0.0/24",
              on_result: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Run the test; each result is also passed to ``on_result`` as it comes. A set-up that
    fails (a Neutron error, a port not ready in time) is a failed result, undone."""
    run_id = uuid.uuid4().hex[:8]
    results: list[Result] = []

    def record(r: Result) -> None:
        results.append(r)
        on_result(r)

    neutron = client.Neutron.from_settings(config)
    binders = binding.binders(config.binding)
    started = time.monotonic()
    try:
        async with _resources(neutron, binders, config, run_id=run_id, cidr=cidr,
                              record=record) as (a, b, blocking_group_id):
            ip_a = a.port.fixed_ips[0].ip_address
            ip_b = b.port.fixed_ips[0].ip_address
            for src, dst, address in ((a, "b", ip_b), (b, "a", ip_a)):
                record(await _timed(f"ping {src.netns[-1]} -> {dst}", functools.partial(
                    _ping_step, src.netns, address)))
            for server, client_side, address in ((b, a, ip_b), (a, b, ip_a)):
                record(await _timed(
                    f"tcp {client_side.netns[-1]} -> {server.netns[-1]}",
                    functools.partial(asyncio.to_thread, _tcp, server.netns,
                                      client_side.netns, address)))

            async def block() -> tuple[bool, str]:
                await neutron.update_port(b.port.id, security_group_ids=[blocking_group_id])
                blocked = await asyncio.to_thread(_ping_until, a.netns, ip_b, expect=False,
                                                  within=10)
                return blocked, ("a cannot reach b" if blocked
                                 else "b still answers behind a group with no ingress rule")

            record(await _timed("security group blocks a -> b", block))
    except errors.KuryrError as e:  # the set-up failed (and was undone): nothing to test
        record(Result(SET_UP, False, time.monotonic() - started, str(e)))
    finally:
        neutron.close()
        for binder in binders.values():
            binder.close()
    return results


async def _ping_step(netns: str, address: str) -> tuple[bool, str]:
    ok = await asyncio.to_thread(_ping_until, netns, address, expect=True, within=10)
    return ok, "" if ok else f"no answer from {address} in 10 s"


@dataclasses.dataclass(frozen=True)
class _Made:
    """What the test makes, findable without its tags (a create and its tagging are two
    calls): the network by ID, the groups by name, the namespaces by name."""

    network_id: str
    name: str
    run_id: str

    @property
    def group_names(self) -> tuple[str, str]:
        return f"{self.name}-allow", f"{self.name}-deny"

    @property
    def netns(self) -> tuple[str, str]:
        return f"kuryr-ct-{self.run_id}-a", f"kuryr-ct-{self.run_id}-b"


async def _sweep(neutron: client.Neutron, binders: dict[str, binding.Binder], made: _Made,
                 *, within: float = 30.0) -> None:
    """Remove everything the test made, whatever state it was left in: every port on its
    network (unplugged and deleted, including one whose create a cancellation cut short and
    that appears only now), the namespaces, groups, subnets and the network. Retries while
    Neutron still sees a port in use, up to ``within`` s. Raises KuryrError naming what is
    left."""
    deadline = time.monotonic() + within
    while True:
        try:
            for port in await neutron.list_ports(network_id=made.network_id):
                await lifecycle.detach(neutron, binders, port_id=port.id)
            for netns in made.netns:
                await asyncio.to_thread(namespaces.remove, netns)
            for subnet in await neutron.list_subnets(network_id=made.network_id):
                await neutron.delete_subnet(subnet.id)
            await neutron.delete_network(made.network_id)
            # Last: a group whose create a cancellation cut short has landed by now.
            for group_name in made.group_names:
                for group in await neutron.list_security_groups(name=group_name):
                    await neutron.delete_security_group(group.id)
            return
        except errors.KuryrError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _resources(neutron: client.Neutron, binders: dict[str, binding.Binder],
                     config: settings.KuryrSettings, *, run_id: str, cidr: str,
                     record: Callable[[Result], None]
                     ) -> AsyncIterator[tuple[lifecycle.Attachment, lifecycle.Attachment, str]]:
    """The network, groups, namespaces and the two attachments; one sweep of everything on
    the network (registered as soon as the network exists) runs whatever happens."""
    name = f"kuryr-conntest-{run_id}"
    started = time.monotonic()
    # The create goes on in its thread if this is cancelled (Ctrl-C): wait for it, then sweep.
    creating = asyncio.ensure_future(neutron.create_network(name, tags=[TAG]))
    try:
        net = await asyncio.shield(creating)
    except asyncio.CancelledError:
        with contextlib.suppress(errors.KuryrError):
            await _sweep(neutron, binders, _Made((await creating).id, name, run_id))
        raise
    made = _Made(net.id, name, run_id)
    try:
        await neutron.create_subnet(net.id, cidr=cidr, ip_version=4, name=name, tags=[TAG])
        allow = await neutron.create_security_group(made.group_names[0], tags=[TAG])
        for protocol in ("icmp", "tcp"):
            await neutron.create_security_group_rule(allow.id, protocol=protocol,
                                                     remote_ip_prefix=cidr)
        deny = await neutron.create_security_group(made.group_names[1], tags=[TAG])
        attachments = []
        for side, netns in zip("ab", made.netns, strict=True):
            await asyncio.to_thread(namespaces.create, netns)
            attachments.append(await lifecycle.attach(
                neutron, binders, network_id=net.id, netns=netns, ifname="eth0",
                host=config.binding.host, tags=[TAG], security_group_ids=[allow.id],
                name=f"{name}-{side}", active_timeout=config.neutron.port_active_timeout))
        record(Result(SET_UP, True, time.monotonic() - started, f"network {net.id}"))
        yield attachments[0], attachments[1], deny.id
    finally:
        await _sweep(neutron, binders, made)
