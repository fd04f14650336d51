"""``kuryr daemon``: the node daemon serving CNI requests, in standalone mode (podman,
containerd: it makes the Neutron ports) or Kubernetes mode (it plugs the VIFs the controller
made). Runs in the foreground until SIGTERM or SIGINT."""

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
@click.option("--health-port", type=int, help="Loopback port of /healthz, /readyz and "
              "/metrics ([cni_daemon] health_port; default 8090).")
@click.option("--pool/--no-pool", default=None, help="Keep warm ports ready, standalone "
              "mode only ([cni_daemon] pool_enabled; default off).")
@click.option("--mode", type=click.Choice(settings.MODES), help="standalone: create each "
              "container's Neutron port (podman, containerd); kubernetes: plug the VIF kuryr "
              "controller wrote into the pod's KuryrPort, never calling Neutron; the API is "
              "[kubernetes]'s, the node [binding] host ([cni_daemon] mode; default "
              "standalone).")
def daemon(config_file: str | None, socket_path: str | None, health_port: int | None,
           pool: bool | None, mode: str | None) -> None:
    """Serve CNI requests from the kuryr CNI executable on a root-only unix socket; health
    and metrics on a loopback port."""
    config = settings.load(config_file)
    changes: dict[str, object] = {}
    if mode:
        changes["mode"] = mode
    if socket_path:
        changes["socket"] = socket_path
    if health_port is not None:
        changes["health_port"] = health_port
    if pool is not None:
        changes["pool_enabled"] = pool
    config = dataclasses.replace(
        config, cni_daemon=dataclasses.replace(config.cni_daemon, **changes))  # type: ignore[arg-type]
    stopping.run_service("kuryr daemon", lambda stop: server.serve(config, stop=stop))

