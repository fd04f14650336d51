"""``kuryr install-cni``: put the ``kuryr`` CNI executable into a runtime's CNI bin dir and write
a network configuration list for a Neutron network (or, for the daemon's Kubernetes mode, for
the pods' own networks) into its conf dir.

The executable is ``kuryr/cni/shim.py`` with its interpreter line rewritten to name a real
interpreter binary (never a shim script such as pyenv's) started with ``-IS``. Installed from a
container image onto its host (the DaemonSet's init container), the line must name the host's
interpreter, not the image's: ``--host-python`` writes a host path as given.
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

from kuryr.cni import shim

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
                       host_python: str | None = None,
                       name: str = EXECUTABLE) -> pathlib.Path:
    """Write the executable atomically into ``bin_dir``; returns its path. ``host_python`` is
    an interpreter path on the machine that will run the executable, written as given: it is
    neither looked for nor resolved in this file system (a container image's, say).

    Raises click.ClickException if ``host_python`` is not absolute, or no interpreter is found.
    """
    if host_python is not None and not os.path.isabs(host_python):
        raise click.ClickException(f"the host's interpreter must be an absolute path, not "
                                   f"{host_python!r}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / name
    _write_atomically(target, shim_text(host_python or interpreter(python)), mode=0o755)
    return target


def conflist(*, name: str, network: str | None, cni_version: str = "1.0.0",
             subnet: str | None = None, security_groups: tuple[str, ...] = (),
             project: str | None = None, mtu: int | None = None,
             daemon_socket: str | None = None, timeout: float | None = None,
             portmap: bool = False) -> dict[str, Any]:
    """A conflist with kuryr's plugin (``network`` None: for the daemon's Kubernetes mode;
    otherwise the plugin declares the ``ips`` and ``mac`` capabilities);
    ``timeout`` is how long the executable waits for the daemon (None: its default)."""
    plugin: dict[str, Any] = {"type": EXECUTABLE}
    if network:
        plugin["network"] = network
        # Standalone mode honours static addresses: runtimes pass them in runtimeConfig.
        plugin["capabilities"] = {"ips": True, "mac": True}
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
    if timeout:
        plugin["timeout"] = timeout
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
@click.option("--network", help="Neutron network (name or ID); without it (and without "
              "--kubernetes) only the executable is installed.")
@click.option("--kubernetes", "for_kubernetes", is_flag=True,
              help="Write a conflist for the daemon's Kubernetes mode: it names no Neutron "
                   "network, each pod's KuryrPort does.")
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
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds the executable waits for the daemon's answer (default "
                   f"{shim.DEFAULT_TIMEOUT:g}: longer than the daemon's own bounds with its "
                   "default settings). Raise "
                   "it above 2 x lock_timeout + 2 x vif_timeout (or port_active_timeout) + "
                   "60 when you raise those.")
@click.option("--portmap/--no-portmap", default=False,
              help="Chain the portmap plugin (podman run -p).")
@click.option("--python", help="Interpreter for the executable (a real binary), found and "
              "resolved on this machine; default /usr/bin/python3, else this interpreter.")
@click.option("--host-python", help="Interpreter for the executable as an absolute path on "
              "the host that will run it, written as given (not checked here): when installing "
              "from a container onto its host, e.g. /usr/bin/python3. A real binary, never a "
              "shim script.")
def install_cni(bin_dir: pathlib.Path, conf_dir: pathlib.Path, network: str | None,
                for_kubernetes: bool, net_name: str, subnet: str | None,
                security_groups: tuple[str, ...],
                project: str | None, mtu: int | None, cni_version: str,
                daemon_socket: str | None, timeout: float | None, portmap: bool,
                python: str | None,
                host_python: str | None) -> None:
    """Install the kuryr CNI executable and a network configuration list."""
    if python and host_python:
        raise click.UsageError("--python and --host-python exclude each other")
    if network and for_kubernetes:
        raise click.UsageError("--network and --kubernetes exclude each other: in Kubernetes "
                               "mode each pod's KuryrPort names its network")
    if for_kubernetes and (subnet or security_groups or project):
        raise click.UsageError("--subnet, --security-group and --project do not apply to "
                               "--kubernetes: the controller chooses each pod's port")
    path = install_executable(bin_dir, python=python, host_python=host_python)
    click.echo(f"installed {path}")
    if network or for_kubernetes:
        written = write_conflist(conf_dir, conflist(
            name=net_name, network=network, cni_version=cni_version, subnet=subnet,
            security_groups=security_groups, project=project, mtu=mtu,
            daemon_socket=daemon_socket, timeout=timeout, portmap=portmap))
        click.echo(f"wrote {written}")
