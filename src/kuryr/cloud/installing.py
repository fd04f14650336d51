"""Installing what the local cloud runs: Debian packages (Open vSwitch, OVN, MariaDB) when
missing, and Neutron and Octavia (with ovn-octavia-provider) each in a virtualenv of its own,
pinned by the constraints files shipped in ``kuryr/cloud/data``.

Owns the package lists, the pins and the install marker, and the policy-rc.d that keeps the
packages' services from starting while apt-get installs them: marked as kuryr's, it is removed
when the install ends or fails, on SIGTERM and SIGHUP, and (after a SIGKILL) by the next run;
one kuryr did not write is never touched. Idempotent: a second call finds everything in place
and returns at once. Does not start or configure anything.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.resources
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence

from kuryr.cloud import commands, layout

APT_PACKAGES = ("openvswitch-switch", "ovn-central", "ovn-host", "mariadb-server", "ethtool",
                "iputils-ping")
NEUTRON_VERSION = "29.0.0"
NEUTRON_REQUIREMENTS = (f"neutron=={NEUTRON_VERSION}", "gunicorn", "pymysql")
CONSTRAINTS_RESOURCE = "neutron-29-constraints.txt"
OCTAVIA_VERSION = "19.0.0"
OVN_OCTAVIA_PROVIDER_VERSION = "11.0.0"
OCTAVIA_REQUIREMENTS = (f"octavia=={OCTAVIA_VERSION}",
                        f"ovn-octavia-provider=={OVN_OCTAVIA_PROVIDER_VERSION}", "gunicorn",
                        "pymysql")
OCTAVIA_CONSTRAINTS_RESOURCE = "octavia-19-constraints.txt"
POLICY_RC_D = pathlib.Path("/usr/sbin/policy-rc.d")
# The line that makes a policy-rc.d kuryr's own (the earlier text carried it too).
POLICY_RC_D_MARK = "# Written by kuryr cloud up during apt-get install."
POLICY_RC_D_TEXT = (f"#!/bin/sh\n{POLICY_RC_D_MARK}\n# kuryr removes it when the install ends; "
                    "if it is still here, no kuryr cloud up is installing: remove it.\n"
                    "exit 101\n")
# The signals that end a process politely: the install's cleanup runs on them.
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
PIP_TIMEOUT = 1200.0
# pip's configuration here names local indexes that may be absent; pip says so once per
# package, which is noise.
_PIP_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")

Progress = Callable[[str], None]


def missing_packages(packages: Sequence[str] = APT_PACKAGES) -> list[str]:
    """The Debian packages of ``packages`` that are not installed."""
    try:
        completed = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Status}\n", *packages],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    except FileNotFoundError:
        return list(packages)
    installed = set()
    for line in completed.stdout.splitlines():
        name, _, status = line.partition("\t")
        if status.strip() == "installed":
            installed.add(name.split(":")[0])
    return [p for p in packages if p not in installed]


def ensure_packages(cloud: layout.CloudLayout, *, progress: Progress) -> bool:
    """Install the missing Debian packages; True when something was installed.

    Raises CloudError when apt-get fails.
    """
    try:
        if remove_stale_policy_rc_d():  # a run killed during apt-get left it (SIGKILL)
            progress(f"removed {POLICY_RC_D}, left by an earlier kuryr cloud up")
    except OSError as e:  # not root: nothing is installed either (see _check_root)
        progress(f"cannot remove {POLICY_RC_D}, left by an earlier kuryr cloud up: {e}")
    missing = missing_packages()
    # Debian's own Python makes virtualenvs only with its -venv package.
    if (sys.base_prefix == "/usr" and not venvs_are_current(cloud)
            and not _base_python_can_make_venvs()):
        missing.append(f"python3.{sys.version_info.minor}-venv")
    if not missing:
        return False
    _check_root("installing Debian packages")
    log = cloud.log("apt")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    progress(f"installing Debian packages: {' '.join(missing)}")
    commands.run(["apt-get", "update", "-q"], step="apt-get update", log=log, env=env,
                 timeout=600)
    with services_not_started():
        commands.run(["apt-get", "install", "-y", "-q", *missing], step="apt-get install",
                     log=log, env=env, timeout=1200)
    still = missing_packages(missing)
    if still:
        raise commands.failure("apt-get install", f"still missing: {' '.join(still)}", log)
    return True


def _is_ours(path: pathlib.Path) -> bool:
    try:
        return POLICY_RC_D_MARK in path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False


def remove_stale_policy_rc_d(path: pathlib.Path = POLICY_RC_D) -> bool:
    """Remove ``path`` if kuryr wrote it (its mark): one an install in progress no longer
    needs (``up`` holds the cloud's lock around its install). True when removed."""
    if not _is_ours(path):
        return False
    path.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _stopping_raises() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise SystemExit (128 + the signal, the
    status a shell shows for it) instead of ending the process on the spot, so that the
    block's cleanup runs: ``subprocess.run`` stops its child, ``finally`` clauses run. Only
    in the main thread (where Python runs handlers); a signal ignored stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.getsignal(s) for s in STOPPING_SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN:  # None: not set from Python, the default
                signal.signal(s, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def services_not_started(path: pathlib.Path = POLICY_RC_D) -> Iterator[None]:
    """Keep the packages' own services (a system Open vSwitch, MariaDB) from starting while
    they install: a second Open vSwitch would collide with the cloud's userspace datapath.
    Uses Debian's policy-rc.d ``path``, marked as kuryr's and removed when the block ends (on
    SIGTERM and SIGHUP too); a policy-rc.d that kuryr did not write stays as it is and is
    used as it is."""
    remove_stale_policy_rc_d(path)
    if path.exists():
        yield
        return
    with _stopping_raises():
        try:
            path.write_text(POLICY_RC_D_TEXT, encoding="utf-8")
            path.chmod(0o755)
            yield
        finally:
            remove_stale_policy_rc_d(path)


@dataclasses.dataclass(frozen=True)
class Venv:
    """One virtualenv of the cloud: where it lives, what goes in, pinned by which file."""

    what: str
    path: pathlib.Path
    requirements: tuple[str, ...]
    constraints_resource: str
    log: pathlib.Path

    @property
    def python(self) -> pathlib.Path:
        return self.path / "bin" / "python"

    @property
    def marker(self) -> pathlib.Path:
        """Written after a successful install: the hash of what was installed."""
        return self.path / ".kuryr-installed"


def neutron_venv(cloud: layout.CloudLayout) -> Venv:
    return Venv("Neutron", cloud.venv, NEUTRON_REQUIREMENTS, CONSTRAINTS_RESOURCE,
                cloud.log("pip"))


def octavia_venv(cloud: layout.CloudLayout) -> Venv:
    return Venv("Octavia", cloud.octavia_venv, OCTAVIA_REQUIREMENTS,
                OCTAVIA_CONSTRAINTS_RESOURCE, cloud.log("pip-octavia"))


def constraints_text(resource: str = CONSTRAINTS_RESOURCE) -> str:
    """The pinned versions of a virtualenv's dependencies, shipped with kuryr."""
    return (importlib.resources.files("kuryr.cloud") / "data" / resource).read_text(
        encoding="utf-8")


def fingerprint(venv: Venv) -> str:
    """What an install is made of: pins, requirements and the Python version."""
    digest = hashlib.sha256()
    digest.update(constraints_text(venv.constraints_resource).encode())
    digest.update("\n".join(venv.requirements).encode())
    digest.update(f"python{sys.version_info.major}.{sys.version_info.minor}".encode())
    return digest.hexdigest()


def is_current(venv: Venv) -> bool:
    """True when the virtualenv holds what ``fingerprint`` describes and still runs."""
    try:
        marker = venv.marker.read_text(encoding="utf-8").strip()
    except OSError:
        return False
    # exists() follows the interpreter symlink: False when the base Python went away.
    return marker == fingerprint(venv) and venv.python.exists()


def venvs_are_current(cloud: layout.CloudLayout) -> bool:
    return is_current(neutron_venv(cloud)) and is_current(octavia_venv(cloud))


def base_python() -> str:
    """The interpreter to create the virtualenv from: never kuryr's own virtualenv."""
    if sys.prefix != sys.base_prefix:
        candidates = [getattr(sys, "_base_executable", ""),
                      os.path.join(sys.base_prefix, "bin",
                                   f"python{sys.version_info.major}.{sys.version_info.minor}"),
                      os.path.join(sys.base_prefix, "bin", "python3")]
        for candidate in candidates:
            if (candidate and os.path.exists(candidate)
                    and not candidate.startswith(sys.prefix + os.sep)):
                return candidate
    return sys.executable


def ensure_venvs(cloud: layout.CloudLayout, *, progress: Progress) -> set[str]:
    """Create Neutron's and Octavia's virtualenvs unless current, both at once when both are
    missing (pip is mostly waiting on downloads); return the ``what`` of those installed now.

    Raises CloudError when venv creation or pip fails (the half-made venv is removed).
    """
    stale = [v for v in (neutron_venv(cloud), octavia_venv(cloud)) if not is_current(v)]
    if len(stale) < 2:
        return {v.what for v in stale if ensure_venv(v, progress=progress)}
    with concurrent.futures.ThreadPoolExecutor(len(stale)) as pool:
        futures = [pool.submit(ensure_venv, v, progress=progress) for v in stale]
        # Every install runs to its end (or its failure) before the first error is raised.
        concurrent.futures.wait(futures)
        return {v.what for v, f in zip(stale, futures, strict=True) if f.result()}


def ensure_venv(venv: Venv, *, progress: Progress) -> bool:
    """Create the virtualenv unless it is current; True when (re)installed now.

    Raises CloudError when venv creation or pip fails (the half-made venv is removed).
    """
    if is_current(venv):
        return False
    if venv.path.exists():
        progress(f"replacing the outdated {venv.what} virtualenv {venv.path}")
        shutil.rmtree(venv.path)
    progress(f"creating {venv.what}'s virtualenv {venv.path} (pip, about a minute)")
    wanted = fingerprint(venv)
    try:
        commands.run([base_python(), "-m", "venv", str(venv.path)],
                     step=f"creating {venv.what}'s virtualenv", log=venv.log)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="kuryr-constraints-",
                                         encoding="utf-8") as pins:
            pins.write(constraints_text(venv.constraints_resource))
            pins.flush()
            commands.run(
                [str(venv.python), "-m", "pip", "install", "-q", "-c", pins.name,
                 *venv.requirements],
                step=f"pip install {' '.join(venv.requirements)}", log=venv.log,
                env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
                timeout=PIP_TIMEOUT, drop=_PIP_NOISE)
    except BaseException:
        shutil.rmtree(venv.path, ignore_errors=True)
        raise
    venv.marker.write_text(wanted + "\n", encoding="utf-8")
    progress(f"installed {venv.what}'s virtualenv")
    return True


def _base_python_can_make_venvs() -> bool:
    completed = subprocess.run([base_python(), "-c", "import ensurepip, venv"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False)
    return completed.returncode == 0


def _check_root(what: str) -> None:
    if os.geteuid() != 0:
        raise commands.failure(what, "needs root (run kuryr cloud up as root)", None)


def neutron_executable(cloud: layout.CloudLayout, name: str) -> pathlib.Path:
    """A console script of Neutron's virtualenv (neutron-db-manage, gunicorn, ...)."""
    return cloud.venv_bin / name


def octavia_executable(cloud: layout.CloudLayout, name: str) -> pathlib.Path:
    """A console script of Octavia's virtualenv (octavia-db-manage, gunicorn, ...)."""
    return cloud.octavia_venv_bin / name
