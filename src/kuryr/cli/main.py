"""``kuryr``: the root command group. Sub-commands live one module each and are registered here.

Errors that kuryr raises on purpose are printed as one line (``Error: ...``) with exit code 1;
a traceback means a bug.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

import kuryr
from kuryr import errors
from kuryr.cli import cloud as cli_cloud
from kuryr.cli import daemon as cli_daemon
from kuryr.cli import demo as cli_demo
from kuryr.cli import install_cni as cli_install_cni
from kuryr.cli import libnetwork as cli_libnetwork


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.KuryrError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(1)


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


main.add_command(cli_cloud.cloud)
main.add_command(cli_demo.demo)
main.add_command(cli_daemon.daemon)
main.add_command(cli_install_cni.install_cni)
main.add_command(cli_libnetwork.libnetwork)
