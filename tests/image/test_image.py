"""The kuryr container image, built as ``make image`` builds it (deploy/image/build.sh: podman,
no registry, the base root file system cached in /var/lib/kuryr/image-cache): kuryr and every
module of the package run in it, ``kuryr install-cni`` run in it puts onto a host directory an
executable that the host's own python runs, it holds no compiler, and it saves as an archive
under the name the manifests in deploy/ give."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator

import pytest
import yaml

import kuryr
from tests.conftest import unavailable
from tests.support import apt, cni

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "image" / "build.sh"
PACKAGES = ("podman", "mmdebstrap")
IMAGE = f"localhost/kuryr:{kuryr.__version__}"
# podman's default limits exceed what these machines let a container set (docs: runtimes.md).
LIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
HOST_PYTHON = "/usr/bin/python3"
MAX_SIZE_MB = 350  # measured 267 MB: Debian minbase + python3 124 MB, the virtualenv 155 MB
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "cpp", "ld", "as", "make")
# gcc-12-base (libgcc's licence files) is no compiler; headers (-dev) only serve one.
COMPILER_PACKAGES = r"(gcc|g\+\+|cpp|clang|binutils)(-[\d.]+)?|build-essential|.*-dev"


def build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILD), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr}")
    return done


def run_in_image(*argv: str, volumes: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    mounts = [a for v in volumes for a in ("--volume", v)]
    return podman("run", "--rm", "--network", "none", *LIMITS, *mounts, IMAGE, *argv)


@pytest.fixture(scope="module")
def image(root: None) -> Iterator[str]:
    failure = apt.install(PACKAGES)
    if failure:
        unavailable(failure)
    started = time.monotonic()
    done = build()
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[-1] == IMAGE
    print(f"\nimage built in {took:.0f} s:\n{done.stderr}")
    yield IMAGE


def test_kuryr_runs_in_the_image(image: str) -> None:
    assert run_in_image("kuryr", "--version").stdout.strip() == \
        f"kuryr, version {kuryr.__version__}"
    commands = run_in_image("kuryr", "--help").stdout
    assert {"controller", "daemon", "install-cni", "gc"} <= set(commands.split())
    assert "--host-python" in run_in_image("kuryr", "install-cni", "--help").stdout


def test_every_module_of_kuryr_imports_in_the_image(image: str) -> None:
    """Each runtime dependency is in the image: importing every module needs them all."""
    script = ("import importlib, pkgutil, kuryr\n"
              "names = [m.name for m in pkgutil.walk_packages(kuryr.__path__, 'kuryr.')\n"
              "         if not m.name.endswith('__main__')]\n"
              "for name in names:\n"
              "    importlib.import_module(name)\n"
              "print(len(names))\n")
    assert int(run_in_image("python", "-c", script).stdout) > 50


def test_install_cni_from_the_image_answers_on_the_host(image: str,
                                                        tmp_path: pathlib.Path) -> None:
    if not os.access(HOST_PYTHON, os.X_OK):
        unavailable(f"no {HOST_PYTHON} on this host")
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    run_in_image("kuryr", "install-cni", "--bin-dir", "/host/opt/cni/bin", "--conf-dir",
                 "/host/etc/cni/net.d", "--network", "pods", "--host-python", HOST_PYTHON,
                 volumes=(f"{bin_dir}:/host/opt/cni/bin", f"{conf_dir}:/host/etc/cni/net.d"))
    executable = bin_dir / "kuryr"
    assert executable.read_text().splitlines()[0] == f"#!{HOST_PYTHON} -IS"
    assert executable.stat().st_mode & 0o777 == 0o755
    rc, out = cni.invoke(executable, "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0 and out is not None and "1.0.0" in out["supportedVersions"]
    (conflist,) = conf_dir.iterdir()
    # Standalone mode: the runtime may pass static addresses (runtimeConfig ips and mac).
    assert json.loads(conflist.read_text())["plugins"][0] == {
        "type": "kuryr", "network": "pods", "capabilities": {"ips": True, "mac": True}}


def test_the_image_holds_no_compiler_and_is_small(image: str) -> None:
    found = run_in_image("sh", "-c", f"for c in {' '.join(COMPILERS)}; do command -v $c; "
                                     "done; true").stdout.split()
    assert found == []
    assert not {"pip", "pip3"} & set(run_in_image("ls", "/opt/kuryr/bin").stdout.split())
    packages = run_in_image("dpkg-query", "-W", "-f=${Package}\n").stdout.split()
    assert not [p for p in packages if re.fullmatch(COMPILER_PACKAGES, p)]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    print(f"\n{image}: {size / 1e6:.0f} MB, {len(packages)} Debian packages")
    assert size < MAX_SIZE_MB * 1e6


def test_the_saved_archive_carries_the_name_the_manifests_use(image: str,
                                                              tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "kuryr.tar"
    try:
        done = build("--save", str(archive))
        assert done.returncode == 0, done.stderr
        with tarfile.open(archive) as tar:
            manifest = tar.extractfile("manifest.json")
            assert manifest is not None
            (entry,) = json.load(manifest)
    finally:
        archive.unlink(missing_ok=True)  # 256 MB
    assert entry["RepoTags"] == [IMAGE]
    named = {container["image"]
             for path in sorted((ROOT / "deploy").rglob("*.yaml"))
             for doc in yaml.safe_load_all(path.read_text()) if doc
             if doc["kind"] in ("Deployment", "DaemonSet")
             for container in [*doc["spec"]["template"]["spec"].get("initContainers", []),
                               *doc["spec"]["template"]["spec"]["containers"]]}
    assert named == {IMAGE}
