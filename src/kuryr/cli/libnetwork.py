"""``kuryr libnetwork``: serve Docker's remote network and IPAM driver."""

from __future__ import annotations

import dataclasses
import os

import click

from kuryr import settings
from kuryr.libnetwork import server


@click.command("libnetwork")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, "
                   "then the local cloud's).")
@click.option("--host", default=None, metavar="127.0.0.1:PORT",
              help="Serve TCP here and announce it in /etc/docker/plugins/<name>.spec instead "
                   "of the unix socket ([libnetwork] socket_path).")
@click.option("--pool/--no-pool", default=None,
              help="Keep ready ports per Docker network (plugged, ACTIVE), so that a container "
                   "whose address kuryr chooses starts with no Neutron call ([libnetwork] "
                   "pool_enabled, pool_size, pool_batch; default on).")
def libnetwork(config_file: str | None, host: str | None, pool: bool | None) -> None:
    """Docker's network and IPAM driver on Neutron: 'docker network create -d kuryr
    --ipam-driver kuryr --subnet 10.10.0.0/24 NAME' makes a Neutron network, and every
    container on it gets a Neutron port, taken from a warm pool of ready ports when the
    address is kuryr's to choose. Runs until SIGINT or SIGTERM; needs root."""
    if os.geteuid() != 0:
        raise click.ClickException("kuryr libnetwork needs root (OVS, veths, Docker's socket)")
    config = settings.load(config_file)
    if pool is not None:
        config = dataclasses.replace(
            config, libnetwork=dataclasses.replace(config.libnetwork, pool_enabled=pool))

    def ready(plugin: server.Plugin) -> None:
        click.echo(f"kuryr libnetwork: serving {plugin.address} (announced at "
                   f"{plugin.announced})", err=True)

    server.run(config, host=host, ready=ready)
