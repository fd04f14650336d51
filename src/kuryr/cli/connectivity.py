"""``kuryr connectivity-test``: two namespaces on a network of the test's own, ping and TCP
both ways and a security group that must block (``kuryr.operating.connectivity``); prints a
table of what passed with timings. Exit code 1 when anything failed."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from kuryr import settings
from kuryr.cli import ports as ports_cli
from kuryr.operating import connectivity


@click.command("connectivity-test")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, the "
                   "local cloud's).")
@click.option("--cidr", default="10.213.0.0/24", show_default=True,
              help="The test network's IPv4 subnet.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Table for people, JSON for scripts.")
def connectivity_test(config_file: str | None, cidr: str, output: str) -> None:
    """Standalone mode, as the CNI daemon plugs containers: make a Neutron network
    (kuryr-conntest-<id>), two network namespaces each on a port plugged on this host, then
    check ping and TCP both ways and that a security group with no ingress rule blocks.
    Removes everything it made, also on failure or Ctrl-C. Needs root."""
    config = settings.load(config_file)

    def show(r: connectivity.Result) -> None:
        if output == "table":
            mark = click.style("pass" if r.is_passed else "FAIL",
                               fg="green" if r.is_passed else "red")
            click.echo(f"  {mark}  {r.seconds:6.2f} s  {r.name}"
                       + (f"  ({r.detail})" if r.detail and not r.is_passed else ""), err=True)

    results = asyncio.run(connectivity.run(config, cidr=cidr, on_result=show))
    failed = [r for r in results if not r.is_passed]
    if output == "json":
        click.echo(json.dumps({"passed": not failed, "results": [r.as_json() for r in results]},
                              indent=2))
    else:
        rows = [(r.name, "pass" if r.is_passed else "FAIL", f"{r.seconds:.2f}", r.detail)
                for r in results]
        click.echo(ports_cli.format_table(("CHECK", "RESULT", "SECONDS", "DETAIL"), rows))
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)
