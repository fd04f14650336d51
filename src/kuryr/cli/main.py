"""``kuryr``: the root command group. Sub-commands live one module each, listed in ``_COMMANDS``.

Errors that kuryr raises on purpose are printed as one line (``Error: ...``) with exit code 1;
a traceback means a bug.
"""

from __future__ import annotations

import importlib
import logging

import click

import kuryr
from kuryr.cli import groups

# Sub-command -> "module:attribute". Imported only when that command runs, so that
# `kuryr cloud up` does not pay for openstacksdk or aiohttp.
_COMMANDS = {
    "cloud": "kuryr.cli.cloud:cloud",
    "connectivity-test": "kuryr.cli.connectivity:connectivity_test",
    "controller": "kuryr.cli.controller:controller",
    "daemon": "kuryr.cli.daemon:daemon",
    "demo": "kuryr.cli.demo:demo",
    "doctor": "kuryr.cli.doctor:doctor",
    "gc": "kuryr.cli.gc:gc",
    "install-cni": "kuryr.cli.install_cni:install_cni",
    "libnetwork": "kuryr.cli.libnetwork:libnetwork",
    "ports": "kuryr.cli.ports:ports",
    "status": "kuryr.cli.status:status",
}


class _Group(groups.KuryrGroup):
    """Loads sub-commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(kuryr.__version__, prog_name="kuryr")
@click.option("--debug", is_flag=True, help="Log debug messages to stderr.")
def main(debug: bool) -> None:
    """kuryr: OpenStack Neutron networking for containers.

    Every container interface is a real Neutron port on a real Neutron network. Start with
    'kuryr cloud up' for a local single-node Neutron, then 'kuryr demo up'.
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
