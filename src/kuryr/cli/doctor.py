"""``kuryr doctor``: faults that leave containers without a network, each with a suggested
fix (``kuryr.operating.doctor`` finds them; this module prints them). Exit code 1 when any
finding is a failure, 0 with warnings only or nothing found."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from kuryr import settings
from kuryr.operating import doctor as operating_doctor
from kuryr.operating import status as operating_status


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, the "
                   "local cloud's).")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Text for people, JSON for scripts.")
@click.option("--down-after", type=float, default=operating_doctor.Thresholds.down_after,
              show_default=True, help="Seconds a port may be DOWN before it is a finding.")
@click.option("--headroom", type=click.FloatRange(0, 1),
              default=operating_doctor.Thresholds.headroom, show_default=True,
              help="Fraction of a quota or subnet that must be left.")
@click.option("--cni-conf-dir", "cni_conf_dirs", multiple=True,
              default=operating_status.CNI_CONF_DIRS, show_default=True,
              help="CNI conf dir whose conflists to check (repeatable).")
def doctor(config_file: str | None, output: str, down_after: float, headroom: float,
           cni_conf_dirs: tuple[str, ...]) -> None:
    """Look for what breaks kuryr's containers, with a fix for each: ports DOWN for long
    (and why: a binding host that is no OVN chassis, a failed binding, not plugged), quota
    headroom for ports, security groups and rules, subnets near exhaustion, untagged
    compute:kuryr ports, kuryr's OVS interfaces whose Neutron port or veth is gone, conflists
    naming a Neutron network that does not exist. Changes nothing."""
    config = settings.load(config_file)
    findings, notes = asyncio.run(operating_doctor.examine(
        config, thresholds=operating_doctor.Thresholds(down_after=down_after,
                                                       headroom=headroom),
        cni_conf_dirs=cni_conf_dirs))
    failed = any(f.severity == operating_doctor.FAIL for f in findings)
    if output == "json":
        click.echo(json.dumps({"findings": [f.as_json() for f in findings], "notes": notes},
                              indent=2))
    else:
        for note in notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        for f in findings:
            colour = "red" if f.severity == operating_doctor.FAIL else "yellow"
            click.echo(click.style(f"{f.severity:<4}", fg=colour) + f" {f.check}: {f.subject}")
            click.echo(f"     {f.finding}")
            click.echo(f"     fix: {f.fix}")
        click.echo(f"{len(findings)} finding(s)" if findings else "no findings")
    if failed:
        sys.exit(1)
