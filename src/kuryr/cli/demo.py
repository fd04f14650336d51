"""``kuryr demo up|down``: two sandboxes on a Neutron network, pinging each other."""

from __future__ import annotations

import asyncio
import time

import click

from kuryr import demo as demo_job
from kuryr import settings


@click.group()
def demo() -> None:
    """Show containers' sandboxes on real Neutron ports (needs root and a Neutron:
    'kuryr cloud up' gives a local one)."""


@demo.command("up")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, "
                   "then the local cloud's).")
def up(config_file: str | None) -> None:
    """Plug two network namespaces onto a Neutron network and ping between them."""
    demo_job.check_root()
    config = settings.load(config_file)
    started = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")

    sandboxes, pings = asyncio.run(demo_job.up(config, say=say))
    click.echo("\nSandboxes on Neutron network " + demo_job.NETWORK_NAME + ":")
    click.echo(f"  {'netns':<14} {'port':<36} {'mac':<17} {'status':<7} addresses")
    for s in sandboxes:
        click.echo(f"  {s.netns:<14} {s.port_id:<36} {s.mac:<17} {s.status:<7} "
                   + ", ".join(s.addresses))
    click.echo("\nPings:")
    for p in pings:
        mark = click.style("ok  ", fg="green") if p.ok else click.style("FAIL", fg="red")
        click.echo(f"  {mark} {p.source} -> {p.target}: {p.summary}")
    click.echo("\nLook around:  ip netns exec kuryr-demo-a ip addr show eth0")
    click.echo("              openstack port list --device-owner compute:kuryr   "
               "(after: eval \"$(kuryr cloud env)\")")
    click.echo("Tear down:    kuryr demo down")
    if not all(p.ok for p in pings):
        raise SystemExit(1)


@demo.command("down")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (as for 'up').")
def down(config_file: str | None) -> None:
    """Remove the demo's sandboxes, ports and network."""
    demo_job.check_root()
    config = settings.load(config_file)
    started = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")

    asyncio.run(demo_job.down(config, say=say))
    click.echo("demo removed")
