"""``kuryr demo up|down``: sandboxes, and Docker and podman containers, on a Neutron network,
pinging each other; and a Service on Octavia in front of two sandboxes, reached through its
VIP and its floating IP."""

from __future__ import annotations

import asyncio
import contextlib
import time

import click

from kuryr import demo as demo_job
from kuryr import demo_runtimes, demo_services, settings


@click.group()
def demo() -> None:
    """Show containers' sandboxes on real Neutron ports (needs root and a Neutron:
    'kuryr cloud up' gives a local one)."""


@demo.command("up")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, "
                   "then the local cloud's).")
@click.option("--with", "with_", metavar="docker,podman|none",
              help="Container runtimes to show beside the sandboxes (default: those "
                   "installed; 'none': the sandboxes only).")
def up(config_file: str | None, with_: str | None) -> None:
    """Plug network namespaces onto a Neutron network, run Docker and podman containers on
    it, ping between them, and put an Octavia load balancer in front of two namespaces."""
    demo_job.check_root()
    config = settings.load(config_file)
    runtimes, skipped = demo_runtimes.select(with_)
    started = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")

    async def run() -> tuple[list[demo_job.Sandbox], list[demo_runtimes.Container],
                             list[demo_job.Ping | demo_runtimes.Ping],
                             demo_services.Service | str]:
        network_id, sandboxes, pings = await demo_job.up(config, say=say)
        v4 = [(s.netns, next(a for a in s.addresses if ":" not in a).split("/")[0])
              for s in sandboxes]
        skip = await demo_services.probe(config)
        if skip is not None:
            say(f"skipped services: {skip}")
        # The load balancer is made while the containers start (Octavia and Neutron do the
        # waiting); its servers start, and it is checked, once the containers are up.
        making = None if skip is not None else asyncio.create_task(demo_services.make(
            config, network_id=network_id, say=say,
            backends=[demo_services.Backend(netns=s.netns, port_id=s.port_id, address=address)
                      for s, (_, address) in zip(sandboxes[:2], v4[:2], strict=True)]))
        try:
            containers, more = await demo_runtimes.up(
                config, runtimes, network_id=network_id, cidr=demo_job.SUBNETS[0][0],
                sandboxes=v4[:2], say=say)
        except BaseException:
            if making is not None:
                making.cancel()  # make removes what it made
                with contextlib.suppress(BaseException):
                    await making
            raise
        if making is None:
            return sandboxes, containers, [*pings, *more], str(skip)
        service = await demo_services.serve(config, await making, client_netns=v4[2][0],
                                            state_file=demo_runtimes.STATE_FILE, say=say)
        return sandboxes, containers, [*pings, *more], service

    for runtime, reason in skipped.items():
        click.echo(f"skipped {runtime}: {reason}")
    sandboxes, containers, pings, service = asyncio.run(run())
    click.echo(f"\nUp in {time.monotonic() - started:.1f} s. On Neutron network "
               f"{demo_job.NETWORK_NAME}:")
    click.echo(f"  {'netns / container':<22} {'port':<36} {'mac':<17} {'status':<7} addresses")
    rows = [(f"netns {s.netns}", s.port_id, s.mac, s.status, s.addresses) for s in sandboxes]
    rows += [(f"{c.runtime} {c.name.removeprefix('kuryr-demo-' + c.runtime + '-')}", c.port_id,
              c.mac, c.status, c.addresses) for c in containers]
    for name, port_id, mac, status, addresses in rows:
        click.echo(f"  {name:<22} {port_id:<36} {mac:<17} {status:<7} " + ", ".join(addresses))
    for runtime, reason in skipped.items():
        click.echo(f"skipped {runtime}: {reason}")
    click.echo("\nPings:")
    for p in pings:
        mark = click.style("ok  ", fg="green") if p.ok else click.style("FAIL", fg="red")
        click.echo(f"  {mark} {p.source} -> {p.target}: {p.summary}")
    checks: tuple[demo_services.Check, ...] = ()
    if isinstance(service, str):
        click.echo(f"\nskipped services: {service}")
    else:
        checks = service.checks
        click.echo(f"\nService on Octavia: load balancer {service.lb_id} "
                   f"({service.provider}), TCP {demo_services.PORT}, "
                   f"{demo_services.ALGORITHM}")
        click.echo(f"  VIP {service.vip} on {service.subnet_cidr}, floating IP "
                   f"{service.floating_ip} on {demo_services.EXTERNAL_NETWORK}")
        click.echo("  members: " + ", ".join(f"{m.netns} {m.address}:{demo_services.PORT}"
                                             for m in service.members))
        for c in checks:
            mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
            click.echo(f"  {mark} {c.source} -> {c.target}: {c.summary}")
    click.echo("\nLook around:  ip netns exec kuryr-demo-a ip addr show eth0")
    if "docker" in runtimes:
        click.echo(f"              docker -H {demo_runtimes.docker_host()} ps")
    click.echo("              openstack port list --device-owner compute:kuryr   "
               "(after: eval \"$(kuryr cloud env)\")")
    if not isinstance(service, str):
        click.echo(f"              ip netns exec {demo_services.OUTSIDE} bash -c 'exec 3<>"
                   f"/dev/tcp/{service.floating_ip}/{demo_services.PORT}; cat <&3'")
    click.echo("Tear down:    kuryr demo down")
    if not all(p.ok for p in pings) or not all(c.ok for c in checks):
        raise SystemExit(1)


@demo.command("down")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (as for 'up').")
def down(config_file: str | None) -> None:
    """Remove the demo's Service (floating IP, load balancer, router interface, servers),
    containers, the processes it started, its sandboxes, ports and network."""
    demo_job.check_root()
    config = settings.load(config_file)
    started = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")

    asyncio.run(demo_services.down(config, network_tag=demo_job.NETWORK_TAG,
                                   state_file=demo_runtimes.STATE_FILE, say=say))
    demo_runtimes.teardown(say=say)
    asyncio.run(demo_job.down(config, say=say))
    click.echo("demo removed")
