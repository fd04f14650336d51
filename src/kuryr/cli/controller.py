"""``kuryr controller``: Kubernetes Pods and Namespaces onto Neutron ports and networks, with
per-node port pools and periodic garbage collection. Runs in the foreground until SIGTERM or
SIGINT."""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable
from typing import Any

import click

from kuryr import settings, stopping
from kuryr.controller import running

LOG = logging.getLogger(__name__)
_F = typing.TypeVar("_F", bound=Callable[..., Any])


def with_kubernetes(config: settings.KuryrSettings, *, kubeconfig: str | None,
                    api_root: str | None) -> settings.KuryrSettings:
    """``config`` with the command line's Kubernetes endpoint, if given."""
    kubernetes = config.kubernetes
    if api_root:
        kubernetes = dataclasses.replace(kubernetes, api_root=api_root, kubeconfig=None)
    elif kubeconfig:
        kubernetes = dataclasses.replace(kubernetes, kubeconfig=kubeconfig, api_root=None)
    return dataclasses.replace(config, kubernetes=kubernetes)



def kubernetes_options(command: _F) -> _F:
    """The options every command that talks to Kubernetes takes: --config, --kubeconfig,
    --api-root."""
    for option in reversed(_KUBERNETES_OPTIONS):
        command = option(command)
    return command


_KUBERNETES_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False),
                 help="kuryr.conf to read (default: $KURYR_CONFIG, /etc/kuryr/kuryr.conf, the "
                      "local cloud's)."),
    click.option("--kubeconfig", type=click.Path(dir_okay=False, exists=True),
                 help="kubeconfig file ([kubernetes] kubeconfig; default: in-cluster)."),
    click.option("--api-root", help="Kubernetes API URL without authentication "
                 "([kubernetes] api_root)."),
]


@click.command()
@kubernetes_options
def controller(config_file: str | None, kubeconfig: str | None, api_root: str | None) -> None:
    """Give every pod a Neutron port and every namespace a Neutron network (or the default
    subnet), from per-node port pools if [kubernetes] pool_size is set, and remove orphans
    every [kubernetes] gc_interval."""
    config = with_kubernetes(settings.load(config_file), kubeconfig=kubeconfig,
                             api_root=api_root)
    stopping.run_service("kuryr controller", lambda stop: running.run(config, stop=stop))

