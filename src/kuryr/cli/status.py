"""``kuryr status``: one screen for this node and the cluster (``kuryr.operating.status``
checks; this module prints them). Exit code 1 when any check fails."""

from __future__ import annotations

import asyncio
import json
import sys

import click

from kuryr import settings
from kuryr.cli import controller as controller_cli
from kuryr.operating import status as operating_status

_COLOURS = {operating_status.OK: "green", operating_status.WARN: "yellow",
            operating_status.FAIL: "red", operating_status.OFF: None}


@click.command()
@controller_cli.kubernetes_options
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Table for people, JSON for scripts.")
@click.option("--cni-conf-dir", "cni_conf_dirs", multiple=True,
              default=operating_status.CNI_CONF_DIRS, show_default=True,
              help="CNI conf dir to look for conflists naming kuryr in (repeatable).")
@click.option("--cni-bin-dir", "cni_bin_dirs", multiple=True,
              default=operating_status.CNI_BIN_DIRS, show_default=True,
              help="CNI bin dir to look for the kuryr executable in (repeatable).")
def status(config_file: str | None, kubeconfig: str | None, api_root: str | None,
           output: str, cni_conf_dirs: tuple[str, ...], cni_bin_dirs: tuple[str, ...]) -> None:
    """Is kuryr working on this node? Neutron (API version, the extensions kuryr needs), this
    host's OVN controller (its chassis must be [binding] host), br-int, the CNI daemon (socket
    and /readyz), the CNI executable for each conflist naming kuryr (VERSION), the Docker
    plugin (/Plugin.Activate), the controller (/readyz, leader) when Kubernetes is
    configured, pool sizes and ports by status.

    Each line is ok, warn, fail or off (a part this node does not run). Exit code 1 when any
    line is fail."""
    config = controller_cli.with_kubernetes(settings.load(config_file), kubeconfig=kubeconfig,
                                            api_root=api_root)
    checks = asyncio.run(operating_status.gather(config, cni_conf_dirs=cni_conf_dirs,
                                                   cni_bin_dirs=cni_bin_dirs))
    healthy = operating_status.is_healthy(checks)
    if output == "json":
        click.echo(json.dumps({"healthy": healthy, "host": config.binding.host,
                               "checks": [c.as_json() for c in checks]}, indent=2))
    else:
        click.echo(f"kuryr on {config.binding.host} (cluster {config.cluster_id})")
        width = max(len(c.name) for c in checks)
        for c in checks:
            state = click.style(f"{c.state:<4}", fg=_COLOURS[c.state])
            click.echo(f"  {c.name:<{width}}  {state}  {c.detail}")
        click.echo("healthy" if healthy else "NOT healthy: see the fail lines")
    if not healthy:
        sys.exit(1)
