"""``kuryr install-cni``'s interpreter line: resolved on this machine by default, written as
given with ``--host-python`` (installing from a container image onto its host), and the
DaemonSet's init container installs with the host's interpreter from the image the manifests
name."""

from __future__ import annotations

import ast
import builtins
import importlib.resources
import os
import pathlib
import re
import sys

import yaml
from click.testing import CliRunner

import kuryr
from kuryr.cli import install_cni

ROOT = pathlib.Path(__file__).resolve().parents[2]


def first_line(path: pathlib.Path) -> str:
    return path.read_text().splitlines()[0]


def test_the_interpreter_is_resolved_on_this_machine_by_default(tmp_path: pathlib.Path) -> None:
    done = CliRunner().invoke(install_cni.install_cni, ["--bin-dir", str(tmp_path),
                                                         "--python", sys.executable])
    assert done.exit_code == 0, done.output
    assert first_line(tmp_path / "kuryr") == f"#!{os.path.realpath(sys.executable)} -IS"


def test_the_host_python_is_written_as_given(tmp_path: pathlib.Path) -> None:
    """Neither looked for nor resolved here: it names a path on another file system."""
    host_python = "/nonexistent/on/this/machine/python3"
    done = CliRunner().invoke(install_cni.install_cni, ["--bin-dir", str(tmp_path),
                                                         "--host-python", host_python])
    assert done.exit_code == 0, done.output
    assert first_line(tmp_path / "kuryr") == f"#!{host_python} -IS"
    assert (tmp_path / "kuryr").stat().st_mode & 0o777 == 0o755


def test_the_host_python_must_be_absolute_and_alone(tmp_path: pathlib.Path) -> None:
    done = CliRunner().invoke(install_cni.install_cni, ["--bin-dir", str(tmp_path),
                                                         "--host-python", "python3"])
    assert done.exit_code != 0 and "absolute" in done.output
    done = CliRunner().invoke(install_cni.install_cni, ["--bin-dir", str(tmp_path), "--python",
                                                         sys.executable, "--host-python",
                                                         "/usr/bin/python3"])
    assert done.exit_code == 2 and "exclude each other" in done.output
    assert not (tmp_path / "kuryr").exists()


def test_the_executable_runs_on_a_hosts_older_python() -> None:
    """Python 3.7 grammar, and annotations never evaluated (``tuple[int, bytes]`` fails at
    import before 3.9): seen failing on 3.8 before, answering on 3.7, 3.8 and 3.9 since."""
    source = importlib.resources.files("kuryr.cni").joinpath("shim.py").read_text("utf-8")
    ast.parse(source, feature_version=(3, 7))
    # Before 3.9 the builtin collections could not be subscripted: loading the module with
    # such stand-ins would fail on any annotation evaluated.
    old = {**vars(builtins), "tuple": object(), "list": object(), "dict": object()}
    namespace: dict[str, object] = {"__name__": "shim", "__builtins__": old}
    exec(compile(source, "shim.py", "exec", dont_inherit=True), namespace)
    assert callable(namespace["main"])


def _containers() -> list[dict[str, object]]:
    found = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "DaemonSet"):
                pod = doc["spec"]["template"]["spec"]
                found += [*pod.get("initContainers", []), *pod["containers"]]
    return found


def test_the_manifests_name_the_image_make_image_builds() -> None:
    """deploy/image/build.sh tags localhost/kuryr:<version of the package>."""
    project = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "(.+)"$', project, re.MULTILINE)
    assert match and match.group(1) == kuryr.__version__
    assert {c["image"] for c in _containers()} == {f"localhost/kuryr:{kuryr.__version__}"}
    assert "image=localhost/kuryr:$version" in (ROOT / "deploy/image/build.sh").read_text()


def test_the_daemon_set_installs_for_the_hosts_python() -> None:
    (installer,) = [c for c in _containers()
                    if c["command"][:2] == ["kuryr", "install-cni"]]  # type: ignore[index]
    command = installer["command"]
    assert isinstance(command, list) and "--python" not in command
    assert command[command.index("--host-python") + 1] == "/usr/bin/python3"
