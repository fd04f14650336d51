"""``kuryr cloud up|down|status|env``: a real single-node Neutron (ML2/OVN) on this machine.

Owns the commands' options, help and output; the work is ``kuryr.cloud.lifecycle``'s.
Errors are printed as ``Error: <message>`` on stderr with exit code 1.
"""

from __future__ import annotations

import os
import pathlib
import time

import click

from kuryr import settings
from kuryr.cli import groups
from kuryr.cloud import layout, lifecycle


def _default_state_dir() -> str:
    return os.environ.get("KURYR_CLOUD_STATE_DIR") or str(settings.DEFAULT_STATE_DIR)


@click.group(cls=groups.KuryrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default=_default_state_dir, show_default="$KURYR_CLOUD_STATE_DIR or "
              f"{settings.DEFAULT_STATE_DIR}",
              help="Directory holding everything of the local cloud: Neutron's virtualenv, "
                   "databases, logs, sockets, generated clouds.yaml and kuryr.conf.")
@click.pass_context
def cloud(ctx: click.Context, state_dir: pathlib.Path) -> None:
    """A local single-node OpenStack Neutron to run kuryr against (needs root).

    Neutron 29 with ML2/OVN, Octavia 19 with the OVN provider, OVN, Open vSwitch (userspace
    datapath) and MariaDB, all on loopback: Neutron at http://127.0.0.1:9696/, Octavia at
    http://127.0.0.1:9876/ (no Keystone, every request is admin). Only one such cloud can run
    per machine.

    \b
    Typical use:
      kuryr cloud up                 # about 3 minutes the first time, seconds afterwards
      eval "$(kuryr cloud env)"      # point openstack, kuryr and ovs-vsctl at it
      openstack network list
      kuryr cloud down               # stop it; 'down --purge' also deletes its data
    """
    ctx.obj = layout.CloudLayout(state_dir)


def _layout(ctx: click.Context) -> layout.CloudLayout:
    found = ctx.find_object(layout.CloudLayout)
    assert found is not None, "the cloud group sets its layout"
    return found


def _timed_progress() -> lifecycle.Progress:
    started = time.monotonic()

    def say(text: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")
    return say


@cloud.command("up")
@click.pass_context
def up(ctx: click.Context) -> None:
    """Install, start and wait for the local cloud; do nothing if it is already healthy.

    The first run installs the Debian packages (openvswitch-switch, ovn-central, ovn-host,
    mariadb-server) when missing, Neutron and Octavia (with ovn-octavia-provider) into
    virtualenvs of their own in the state directory, then creates the databases and the
    external network kuryr-public (floating IPs, reachable from the namespace kuryr-outside).
    After a crash or a reboot, 'up' restarts what is not running. It returns when Neutron
    lists this host's OVN Controller agent alive and Octavia lists the ovn provider.
    """
    cloud_layout = _layout(ctx)
    lifecycle.up(cloud_layout, progress=_timed_progress())
    click.echo(f"Neutron API: {layout.NEUTRON_URL}   Octavia API: {layout.OCTAVIA_URL}   "
               f"state: {cloud_layout.state_dir}")
    click.echo('Use it:      eval "$(kuryr cloud env)"')


@cloud.command("down")
@click.option("--purge", is_flag=True,
              help="Also delete all the cloud's data: MariaDB (Neutron's and Octavia's databases), "
                   "OVS and OVN databases, logs and generated configuration. The Neutron and "
                   "Octavia virtualenvs are kept, so the next 'up' needs no download.")
@click.pass_context
def down(ctx: click.Context, purge: bool) -> None:
    """Stop every process of the local cloud (by the PIDs in its pidfiles) and remove the
    outside namespace.

    The data stays, so 'up' brings back the same networks and ports; add --purge to start
    afresh next time.
    """
    stopped = lifecycle.down(_layout(ctx), purge=purge, progress=_timed_progress())
    if not stopped:
        click.echo("nothing was running")


@cloud.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show each service (running or not, pid), whether Neutron sees the OVN agent alive,
    whether Octavia lists the ovn provider and whether the outside namespace is in place.

    Exits 1 when any service is down, the agent is not alive, Octavia lacks the provider or
    the outside namespace is missing.
    """
    result = lifecycle.status(_layout(ctx))
    click.echo(f"{'service':<32} {'state':<8} detail")
    for service in result.services:
        mark = (click.style(f"{'running':<8}", fg="green") if service.running
                else click.style(f"{'stopped':<8}", fg="red"))
        click.echo(f"{service.name:<32} {mark} {service.detail}")
    agent = (click.style("alive", fg="green") if result.api.agent_alive
             else click.style("not alive", fg="red"))
    click.echo(f"\nOVN Controller agent: {agent} ({result.api.detail})")
    provider = (click.style("ovn listed", fg="green") if result.octavia.healthy
                else click.style("ovn not listed", fg="red"))
    click.echo(f"Octavia API:          {provider} ({result.octavia.detail})")
    outside = (click.style("present", fg="green") if result.outside.present
               else click.style("missing", fg="red"))
    click.echo(f"Outside namespace:    {outside} ({result.outside.detail})")
    if not result.healthy:
        raise SystemExit(1)


@cloud.command("env")
@click.pass_context
def env(ctx: click.Context) -> None:
    """Print shell exports that point clients at the local cloud: eval "$(kuryr cloud env)".

    Sets OS_CLIENT_CONFIG_FILE and OS_CLOUD (openstack, openstacksdk; the clouds.yaml entry
    names Neutron's and Octavia's endpoints), KURYR_CONFIG (kuryr) and
    OVS_RUNDIR, OVN_RUNDIR, ... (ovs-vsctl, ovn-nbctl); and PATH, when the openstack client
    is installed beside kuryr (make setup).
    """
    click.echo(lifecycle.env(_layout(ctx)), nl=False)
