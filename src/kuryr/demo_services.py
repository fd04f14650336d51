"""The main job's Service: an Octavia load balancer in front of two of the demo's sandboxes.

``make`` (once the sandboxes are up; it may run beside the containers' bring-up) attaches the
demo network's IPv4 subnet to the cloud's router ``kuryr-router`` (the OVN provider answers
for a VIP only on a routed subnet), opens TCP 80 on the members' ports to clients outside the
network (a security group: the default one lets in only its own members), and makes a load
balancer with its VIP on that subnet, a TCP listener on port 80, a SOURCE_IP_PORT pool with
the two sandboxes as members (one batch update) and a floating IP from ``kuryr-public`` on
the VIP port. ``serve`` starts a "who answers" server in each member sandbox and shows the
Service: the client sandbox connects to VIP:80 and hears both members; the cloud's outside
namespace ``kuryr-outside`` connects to the floating IP. ``down`` removes all of it.
Idempotent.

Owns what it makes, each findable without its tags: the load balancer (tag
``kuryr-demo=service``; Octavia tags in the create itself), the floating IP (tag and
description), the security group (name), the router interface (the demo subnet on the
router) and the servers (by PID in the demo's state file, ``kuryr.demo_runtimes``' format, so
its teardown would end them too). It does not own the sandboxes or the network
(``kuryr.demo``), nor the router, the external network and the outside namespace, which
``kuryr cloud up`` made.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from kuryr import errors, settings
from kuryr.linux import namespaces
from kuryr.neutron import client, connecting, resources, tagging
from kuryr.octavia import client as octavia_client
from kuryr.octavia import resources as octavia_resources

ROUTER = "kuryr-router"
EXTERNAL_NETWORK = "kuryr-public"
OUTSIDE = "kuryr-outside"
NAME = "kuryr-demo"  # load balancer; listener and pool are NAME:PORT
SECURITY_GROUP = "kuryr-demo-service"
FIP_DESCRIPTION = "kuryr demo: the Service's floating IP"
TAG = tagging.owner("demo", "service")
PORT = 80
ALGORITHM = "SOURCE_IP_PORT"  # spreads one client's connections over the members
SERVER_MARKER = "kuryr-demo-answer"  # in every server's command line
ASKS = 6  # connections per check, at least
ASK_LIMIT = 15.0  # seconds a check may take (the floating IP may need a moment)
PROBE_TIMEOUT = 10.0
Say = Callable[[str], None]

# The servers and the client run with ``ip netns exec`` as ``python -I -c``: standard library
# only, started in ~20 ms. A server answers every connection with its sandbox's name.
SERVER = f"""\
import socket, sys  # {SERVER_MARKER}
server = socket.create_server(("0.0.0.0", int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(sys.argv[1].encode() + b"\\n")
"""
# Connects (each time from a new source port) until it has heard ``count`` answers from
# ``members`` distinct servers, or ``limit`` seconds pass; prints what it heard as JSON.
CLIENT = """\
import json, socket, sys, time
host, port, count, members = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + float(sys.argv[5])
answers, failures = [], []
while time.monotonic() < deadline and len(answers) < 4 * count and (
        len(answers) < count or len(set(answers)) < members):
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            answers.append(conn.makefile().readline().strip() or "(nothing)")
    except OSError as e:
        failures.append(type(e).__name__)
        time.sleep(0.1)
print(json.dumps({"answers": answers, "failures": failures}))
"""


@dataclasses.dataclass(frozen=True)
class Backend:
    """A member sandbox: its network namespace, Neutron port and IPv4 address."""

    netns: str
    port_id: str
    address: str


@dataclasses.dataclass(frozen=True)
class Check:
    source: str
    target: str
    ok: bool
    summary: str


@dataclasses.dataclass(frozen=True)
class Service:
    lb_id: str
    provider: str
    network_id: str
    subnet_cidr: str  # the VIP's
    vip: str
    floating_ip: str
    members: tuple[Backend, ...]
    checks: tuple[Check, ...] = ()  # once ``serve`` ran


def _octavia(config: settings.KuryrSettings, neutron: client.Neutron) -> octavia_client.Octavia:
    conn = connecting.connect(config.neutron,
                              load_balancer_endpoint=config.octavia.endpoint_override)
    return octavia_client.Octavia(conn, base_tags=neutron.base_tags)


async def probe(config: settings.KuryrSettings) -> str | None:
    """Why the Service cannot be shown here (Octavia, the router, the external network or the
    outside namespace missing), or None. Never raises for what is missing."""
    if not namespaces.exists(OUTSIDE):
        return f"no network namespace {OUTSIDE} (made by 'kuryr cloud up')"
    neutron = client.Neutron.from_settings(config)
    octavia = _octavia(config, neutron)
    try:
        try:
            providers = await asyncio.wait_for(octavia.list_providers(), PROBE_TIMEOUT)
        except (errors.KuryrError, TimeoutError) as e:
            return f"Octavia does not answer ({str(e) or 'no answer in time'})"
        wanted = config.octavia.provider
        if wanted not in providers:
            return (f"Octavia has no provider {wanted!r} (it lists "
                    f"{', '.join(providers) or 'none'})")
        try:
            router = await neutron.get_router(ROUTER)
            public = await neutron.get_network(EXTERNAL_NETWORK)
        except errors.NotFoundError as e:
            return f"{e} ('kuryr cloud up' makes {ROUTER} and {EXTERNAL_NETWORK})"
        if router.external_network_id != public.id:
            return f"router {ROUTER} has no gateway on {EXTERNAL_NETWORK}"
        return None
    finally:
        octavia.close()
        neutron.close()


async def make(config: settings.KuryrSettings, *, network_id: str,
               backends: Sequence[Backend], say: Say) -> Service:
    """Put a load balancer with a floating IP in front of ``backends`` (nothing listens yet:
    ``serve`` starts the servers and checks). Touches no process or file, so it may run
    beside ``kuryr.demo_runtimes.up``. An earlier demo's load balancer is replaced; on
    failure or cancellation everything made is removed. Raises KuryrError."""
    neutron = client.Neutron.from_settings(config)
    octavia = _octavia(config, neutron)
    try:
        await _remove_floating_ips(neutron, say=say)
        await _remove_load_balancers(octavia, config, say=say)
        try:
            return await _build(neutron, octavia, config, network_id=network_id,
                                backends=backends, say=say)
        except BaseException:
            say("failed: removing the Service")
            with contextlib.suppress(errors.KuryrError):
                await _remove(neutron, octavia, config, network_ids=[network_id],
                              state_file=None, say=say)
            raise
    finally:
        octavia.close()
        neutron.close()


async def serve(config: settings.KuryrSettings, service: Service, *, client_netns: str,
                state_file: pathlib.Path, say: Say) -> Service:
    """Start the members' servers (recorded in ``state_file``) and check the Service from
    ``client_netns`` (VIP) and the outside namespace (floating IP); returns it with the
    checks. On failure everything made is removed (as by ``down``). Raises KuryrError."""
    try:
        await asyncio.to_thread(_start_servers, service.members, state_file, say=say)
        count = len(service.members)
        checks = await asyncio.gather(
            asyncio.to_thread(_check, client_netns, f"VIP {service.vip}:{PORT}", service.vip,
                              count),
            asyncio.to_thread(_check, OUTSIDE, f"floating IP {service.floating_ip}:{PORT}",
                              service.floating_ip, count))
    except BaseException:
        say("failed: removing the Service")
        with contextlib.suppress(errors.KuryrError):
            await down(config, network_ids=[service.network_id], state_file=state_file,
                       say=say)
        raise
    return dataclasses.replace(service, checks=tuple(checks))


async def down(config: settings.KuryrSettings, *, network_tag: str | None = None,
               network_ids: Sequence[str] = (), state_file: pathlib.Path, say: Say) -> None:
    """Remove the floating IP, then side by side the load balancer, the router interfaces
    of the networks (``network_ids`` and those tagged ``network_tag``), the security group
    and the servers. Idempotent; a cloud without Octavia is not an error. Raises
    KuryrError."""
    neutron = client.Neutron.from_settings(config)
    octavia = _octavia(config, neutron)
    try:
        tagged = await neutron.list_networks(tags=[network_tag]) if network_tag else []
        await _remove(neutron, octavia, config,
                      network_ids=[*network_ids, *(n.id for n in tagged)],
                      state_file=state_file, say=say)
    finally:
        octavia.close()
        neutron.close()


# -- bring-up -----------------------------------------------------------------------------------
async def _build(neutron: client.Neutron, octavia: octavia_client.Octavia,
                 config: settings.KuryrSettings, *, network_id: str,
                 backends: Sequence[Backend], say: Say) -> Service:
    net = await neutron.get_network(network_id)
    subnet = next((s for s in await neutron.list_subnets(network_id=network_id)
                   if s.ip_version == 4), None)
    if subnet is None:
        raise errors.PermanentError(f"network {network_id} has no IPv4 subnet for the VIP")
    router = await neutron.get_router(ROUTER)
    public = await neutron.get_network(EXTERNAL_NETWORK)
    # The router interface, the security group and the load balancer do not depend on one
    # another: made side by side (the OVN provider takes a router added after the VIP).
    lb: octavia_resources.LoadBalancer = (await _together(
        _create_load_balancer(octavia, config, subnet.id, net.project_id, say=say),
        _attach_subnet(neutron, router, subnet, say=say),
        _open_members(neutron, net.project_id, backends, say=say)))[0]
    say(f"load balancer {lb.id} ACTIVE, VIP {lb.vip_address}")
    fip: resources.FloatingIp = (await _together(
        _floating_ip(neutron, public, lb, net.project_id, say=say),
        _listen(octavia, config, lb, subnet.id, backends, say=say)))[0]
    return Service(lb_id=lb.id, provider=lb.provider, network_id=network_id,
                   subnet_cidr=subnet.cidr, vip=lb.vip_address,
                   floating_ip=fip.floating_ip_address, members=tuple(backends))


async def _together(*steps: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run ``steps`` side by side; returns their results. The first failure cancels the rest
    and is raised as it is (not in an ExceptionGroup)."""
    try:
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(step) for step in steps]
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
    return [task.result() for task in running]


async def _attach_subnet(neutron: client.Neutron, router: resources.Router,
                         subnet: resources.Subnet, *, say: Say) -> None:
    """Idempotent: a subnet already on the router is left as it is."""
    if await _router_ports(neutron, router.id, subnet.network_id, subnet.id):
        return
    say(f"attaching subnet {subnet.cidr} to router {router.name}")
    await neutron.add_router_interface(router.id, subnet.id)


async def _router_ports(neutron: client.Neutron, router_id: str, network_id: str,
                        subnet_id: str | None = None) -> list[str]:
    """The subnets (of ``network_id``, or just ``subnet_id``) that are on the router."""
    ports = await neutron.list_ports(device_id=router_id, network_id=network_id)
    return [f.subnet_id for p in ports for f in p.fixed_ips
            if subnet_id is None or f.subnet_id == subnet_id]


async def _open_members(neutron: client.Neutron, project_id: str, backends: Sequence[Backend],
                        *, say: Say) -> None:
    """The security group letting TCP ``PORT`` in from anywhere, on every member's port: the
    load balancer keeps the client's address, which the default group lets in only from its
    own members (the client sandbox is one, the outside namespace is not)."""
    found = await neutron.list_security_groups(name=SECURITY_GROUP)
    if found:
        group = found[0]
    else:
        say(f"creating security group {SECURITY_GROUP} (TCP {PORT} in, from anywhere)")
        group = await neutron.create_security_group(
            SECURITY_GROUP, description=f"kuryr demo: TCP {PORT} to the Service's members",
            tags=[TAG], project_id=project_id or None)
    rules = await neutron.list_security_group_rules(security_group_id=group.id)
    if not any(r.direction == "ingress" and r.protocol == "tcp" and r.port_range_min == PORT
               for r in rules):
        await neutron.create_security_group_rule(
            group.id, protocol="tcp", port_range_min=PORT, port_range_max=PORT,
            description="the demo Service's clients")
    for backend in backends:
        port = await neutron.get_port(backend.port_id)
        if group.id not in port.security_group_ids:
            await neutron.update_port(port.id,
                                      security_group_ids=[*port.security_group_ids, group.id])


async def _create_load_balancer(octavia: octavia_client.Octavia,
                                config: settings.KuryrSettings, subnet_id: str,
                                project_id: str, *, say: Say) -> octavia_resources.LoadBalancer:
    say(f"creating Octavia load balancer {NAME} ({config.octavia.provider} provider)")
    lb = await octavia.create_load_balancer(
        NAME, vip_subnet_id=subnet_id, project_id=project_id or None,
        provider=config.octavia.provider, tags=[TAG],
        description="kuryr demo: who answers on TCP 80")
    return await _settle(octavia, config, lb.id)


async def _settle(octavia: octavia_client.Octavia, config: settings.KuryrSettings,
                  lb_id: str) -> octavia_resources.LoadBalancer:
    """Wait until the load balancer takes the next change. Raises PermanentError for ERROR."""
    lb = await octavia.wait_load_balancer(lb_id, timeout=config.octavia.provisioning_timeout)
    if lb.provisioning_status != "ACTIVE":
        raise errors.PermanentError(f"load balancer {lb_id} went to {lb.provisioning_status}")
    return lb


async def _listen(octavia: octavia_client.Octavia, config: settings.KuryrSettings,
                  lb: octavia_resources.LoadBalancer, subnet_id: str,
                  backends: Sequence[Backend], *, say: Say) -> None:
    label = f"{NAME}:{PORT}"
    say(f"creating listener TCP/{PORT} and pool {ALGORITHM}")
    listener = await octavia.create_listener(lb.id, name=label, protocol="TCP",
                                             protocol_port=PORT, tags=[TAG])
    await _settle(octavia, config, lb.id)
    pool = await octavia.create_pool(listener_id=listener.id, name=label, protocol="TCP",
                                     lb_algorithm=ALGORITHM, tags=[TAG])
    await _settle(octavia, config, lb.id)
    say("setting members " + ", ".join(f"{b.netns} {b.address}" for b in backends))
    await octavia.set_members(pool.id, [
        octavia_resources.MemberSpec(b.address, PORT, subnet_id, b.netns, (TAG,))
        for b in backends])
    await _settle(octavia, config, lb.id)


async def _floating_ip(neutron: client.Neutron, public: resources.Network,
                       lb: octavia_resources.LoadBalancer, project_id: str, *,
                       say: Say) -> resources.FloatingIp:
    say(f"creating a floating IP on {public.name} for the VIP port")
    return await neutron.create_floating_ip(
        public.id, port_id=lb.vip_port_id, project_id=project_id or None, tags=[TAG],
        description=FIP_DESCRIPTION)


# -- the servers and the checks -----------------------------------------------------------------
def _start_servers(backends: Sequence[Backend], state_file: pathlib.Path, *, say: Say) -> None:
    """Start a server in each backend's sandbox, in its own session (it outlives the demo's
    command), record it in the state file, then wait for it to listen. Raises
    PermanentError."""
    started = []
    for backend in backends:
        say(f"starting a who-answers server on TCP {PORT} in {backend.netns}")
        process = subprocess.Popen(
            ["ip", "netns", "exec", backend.netns, sys.executable, "-I", "-c", SERVER,
             backend.netns, str(PORT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        _record(state_file, {"what": f"server in {backend.netns}", "pid": process.pid,
                             "marker": SERVER_MARKER})
        started.append((backend.netns, process))
    for netns, process in started:
        assert process.stdout is not None
        with process.stdout:
            line = process.stdout.readline()  # "ready", or what it said before it died
            if line.strip() != b"ready":
                said = (line + process.stdout.read()).decode(errors="replace").strip()
                raise errors.PermanentError(f"the server in {netns} did not start: "
                                            f"{said[-1000:] or 'no output'}")


def _check(netns: str, target: str, host: str, members: int) -> Check:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-I", "-c", CLIENT, host, str(PORT),
         str(ASKS), str(members), str(ASK_LIMIT)],
        capture_output=True, text=True, timeout=ASK_LIMIT + 30)
    try:
        heard = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check(source=netns, target=target, ok=False,
                     summary=(done.stderr or done.stdout).strip()[-300:] or "no output")
    counts = collections.Counter(heard["answers"])
    summary = f"{len(heard['answers'])} answers" + (
        " (" + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) + ")"
        if counts else "")
    if heard["failures"]:
        summary += f"; {len(heard['failures'])} tries unanswered " \
                   f"({', '.join(sorted(set(heard['failures'])))})"
    return Check(source=netns, target=target, ok=len(counts) >= members, summary=summary)


# -- removal ------------------------------------------------------------------------------------
async def _remove(neutron: client.Neutron, octavia: octavia_client.Octavia,
                  config: settings.KuryrSettings, *, network_ids: Sequence[str],
                  state_file: pathlib.Path | None, say: Say) -> None:
    # The floating IP first: Neutron keeps a router interface a floating IP needs.
    await _remove_floating_ips(neutron, say=say)
    steps = [_remove_load_balancers(octavia, config, say=say),
             _detach_subnets(neutron, network_ids, say=say), _close_members(neutron, say=say)]
    if state_file is not None:
        steps.append(asyncio.to_thread(_stop_servers, state_file, say=say))
    failed = [r for r in await asyncio.gather(*steps, return_exceptions=True)
              if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


async def _remove_floating_ips(neutron: client.Neutron, *, say: Say) -> None:
    """The Service's floating IPs: by tag, and by description (an untagged one left by a
    create whose tagging was cut short)."""
    for fip in {f.id: f for f in [
            *await neutron.list_floating_ips(tags=[*neutron.base_tags, TAG]),
            *await neutron.list_floating_ips(description=FIP_DESCRIPTION)]}.values():
        say(f"deleting floating IP {fip.floating_ip_address}")
        await neutron.delete_floating_ip(fip.id)


async def _remove_load_balancers(octavia: octavia_client.Octavia,
                                 config: settings.KuryrSettings, *, say: Say) -> None:
    """Delete the load balancer with everything on it and wait until it is gone (its VIP
    port holds the network). Octavia not answering is said, not raised."""
    try:
        found = await octavia.list_load_balancers(tags=[*octavia.base_tags, TAG])
    except errors.KuryrError as e:
        say(f"load balancers not looked for: Octavia does not answer ({e})")
        return
    timeout = config.octavia.provisioning_timeout
    for lb in found:
        say(f"deleting load balancer {lb.id} (cascade)")
        if lb.is_pending and lb.provisioning_status != "PENDING_DELETE":
            await octavia.wait_load_balancer(lb.id, timeout=timeout)
        await octavia.delete_load_balancer(lb.id, cascade=True)
    await asyncio.gather(*(octavia.wait_load_balancer_deleted(lb.id, timeout=timeout)
                           for lb in found))


async def _detach_subnets(neutron: client.Neutron, network_ids: Sequence[str], *,
                          say: Say) -> None:
    with contextlib.suppress(errors.NotFoundError):
        router = await neutron.get_router(ROUTER)
        for network_id in network_ids:
            for subnet_id in await _router_ports(neutron, router.id, network_id):
                say(f"removing subnet {subnet_id} from router {ROUTER}")
                await neutron.remove_router_interface(router.id, subnet_id)


async def _close_members(neutron: client.Neutron, *, say: Say) -> None:
    """Take the security group off the ports that have it, and delete it."""
    for group in await neutron.list_security_groups(name=SECURITY_GROUP):
        for port in await neutron.list_ports(security_group_ids=[group.id]):
            await neutron.update_port(port.id, security_group_ids=[
                g for g in port.security_group_ids if g != group.id])
        say(f"deleting security group {SECURITY_GROUP}")
        await neutron.delete_security_group(group.id)


def _stop_servers(state_file: pathlib.Path, *, say: Say) -> None:
    """End the servers the state file records (SIGTERM, then SIGKILL) and drop them from
    it."""
    servers: list[dict[str, Any]] = []

    def take(state: dict[str, Any]) -> None:
        servers.extend(p for p in state["processes"] if p.get("marker") == SERVER_MARKER)
        state["processes"] = [p for p in state["processes"]
                              if p.get("marker") != SERVER_MARKER]

    if not state_file.exists():
        return
    _update_state(state_file, take)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in servers:
            if _is_server(proc):
                if sig == signal.SIGTERM:
                    say(f"stopping the {proc['what']} (pid {proc['pid']})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc["pid"], sig)
        deadline = time.monotonic() + 5
        while any(_is_server(p) for p in servers) and time.monotonic() < deadline:
            time.sleep(0.02)


def _is_server(proc: dict[str, Any]) -> bool:
    """Whether the recorded PID is still that server (not a zombie, not a reused PID)."""
    try:
        stat = pathlib.Path(f"/proc/{proc['pid']}/stat").read_text()
        cmdline = pathlib.Path(f"/proc/{proc['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and SERVER_MARKER.encode() in cmdline


def _record(state_file: pathlib.Path, process: dict[str, Any]) -> None:
    """Add a process to the state file, as ``kuryr.demo_runtimes`` records its own."""
    _update_state(state_file, lambda state: state["processes"].append(process))


def _update_state(state_file: pathlib.Path,
                  change: Callable[[dict[str, Any]], None]) -> None:
    """Read, change and atomically rewrite the demo's state file (made if missing)."""
    state: dict[str, Any] = (json.loads(state_file.read_text()) if state_file.exists()
                             else {})
    state.setdefault("processes", [])
    change(state)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    temp = state_file.with_suffix(".services.tmp")
    temp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temp, state_file)
