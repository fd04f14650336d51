"""``kuryr daemon``: the node daemon serving CNI requests (standalone mode: podman,
containerd). Runs in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import dataclasses
import logging

import click

from kuryr import settings, stopping
from kuryr.daemon import server

LOG = logging.getLogger(__name__)


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, the "
                   "local cloud's).")
@click.option("--socket", "socket_path", help="Unix socket for CNI requests "
              "([cni_daemon] socket; default /run/kuryr/kuryr-cni.sock).")
@click.option("--health-port", type=int, help="Loopback port of /healthz and /readyz "
              "([cni_daemon] health_port; default 8090).")
@click.option("--pool/--no-pool", default=None, help="Keep warm ports ready "
              "([cni_daemon] pool_enabled; default off).")
def daemon(config_file: str | None, socket_path: str | None, health_port: int | None,
           pool: bool | None) -> None:
    """Serve CNI requests from the kuryr CNI executable on a root-only unix socket."""
    config = settings.load(config_file)
    changes: dict[str, object] = {}
    if socket_path:
        changes["socket"] = socket_path
    if health_port is not None:
        changes["health_port"] = health_port
    if pool is not None:
        changes["pool_enabled"] = pool
    config = dataclasses.replace(
        config, cni_daemon=dataclasses.replace(config.cni_daemon, **changes))  # type: ignore[arg-type]
    stopping.run_service("kuryr daemon", lambda stop: server.serve(config, stop=stop))

