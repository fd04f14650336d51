"""``kuryr install-cni``: put the ``kuryr`` CNI executable into a runtime's CNI bin dir and write
a network configuration list for a Neutron network into its conf dir.

The executable is ``kuryr/cni/shim.py`` with its interpreter line rewritten to name a real
interpreter binary (never a shim script such as pyenv's) started with ``-IS``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pathlib
import sys
import tempfile
from typing import Any

import click

DEFAULT_PYTHON = "/usr/bin/python3"
EXECUTABLE = "kuryr"


def interpreter(explicit: str | None = None) -> str:
    """The real binary to name in the interpreter line: ``explicit``, else Debian's python3
    (fastest to start, measured), else this interpreter; symlinks resolved."""
    for candidate in (explicit, DEFAULT_PYTHON, sys.executable):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise click.ClickException("no Python interpreter found for the CNI executable")


def shim_text(python: str) -> str:
    source = importlib.resources.files("kuryr.cni").joinpath("shim.py").read_text("utf-8")
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    return f"#!{python} -IS\n{body}"


def install_executable(bin_dir: pathlib.Path, *, python: str | None = None,
                       name: str = EXECUTABLE) -> pathlib.Path:
    """Write the executable atomically into ``bin_dir``; returns its path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    _write_atomically(target, shim_text(interpreter(python)), mode=0o755)
    return target


def conflist(*, name: str, network: str, cni_version: str = "1.0.0",
             subnet: str | None = None, security_groups: tuple[str, ...] = (),
             project: str | None = None, mtu: int | None = None,
             daemon_socket: str | None = None, portmap: bool = False) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": EXECUTABLE, "network": network}
    if subnet:
        plugin["subnet"] = subnet
    if security_groups:
        plugin["securityGroups"] = list(security_groups)
    if project:
        plugin["project"] = project
    if mtu:
        plugin["mtu"] = mtu
    if daemon_socket:
        plugin["daemonSocket"] = daemon_socket
    plugins: list[dict[str, Any]] = [plugin]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def write_conflist(conf_dir: pathlib.Path, config: dict[str, Any], *,
                   priority: int = 10) -> pathlib.Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    target = conf_dir / f"{priority:02d}-{config['name']}.conflist"
    _write_atomically(target, json.dumps(config, indent=2) + "\n", mode=0o644)
    return target


def _write_atomically(target: pathlib.Path, text: str, *, mode: int) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        pathlib.Path(temp).unlink(missing_ok=True)
        raise


@click.command("install-cni")
@click.option("--bin-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default="/opt/cni/bin", show_default=True, help="The runtime's CNI bin dir.")
@click.option("--conf-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default="/etc/cni/net.d", show_default=True, help="The runtime's CNI conf dir.")
@click.option("--network", help="Neutron network (name or ID); without it only the "
              "executable is installed.")
@click.option("--name", "net_name", default="kuryr", show_default=True,
              help="CNI network name (podman run --network NAME).")
@click.option("--subnet", help="Neutron subnet (name or ID) to take addresses from.")
@click.option("--security-group", "security_groups", multiple=True,
              help="Security group (name or ID); repeat for several.")
@click.option("--project", help="Neutron project ID owning the ports.")
@click.option("--mtu", type=int, help="Interface MTU (at most the network's).")
@click.option("--cni-version", default="1.0.0", show_default=True,
              type=click.Choice(["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
              help="podman 4 and containerd 1.6 reject 1.1.0 results.")
@click.option("--daemon-socket", help="The daemon's socket, if not the default.")
@click.option("--portmap/--no-portmap", default=False,
              help="Chain the portmap plugin (podman run -p).")
@click.option("--python", help="Interpreter for the executable (a real binary).")
def install_cni(bin_dir: pathlib.Path, conf_dir: pathlib.Path, network: str | None,
                net_name: str, subnet: str | None, security_groups: tuple[str, ...],
                project: str | None, mtu: int | None, cni_version: str,
                daemon_socket: str | None, portmap: bool, python: str | None) -> None:
    """Install the kuryr CNI executable and a network configuration list."""
    path = install_executable(bin_dir, python=python)
    click.echo(f"installed {path}")
    if network:
        written = write_conflist(conf_dir, conflist(
            name=net_name, network=network, cni_version=cni_version, subnet=subnet,
            security_groups=security_groups, project=project, mtu=mtu,
            daemon_socket=daemon_socket, portmap=portmap))
        click.echo(f"wrote {written}")
