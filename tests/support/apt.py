"""Debian packages a test needs, installed with apt-get when missing (as CI's .ci/run does)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable


def missing(packages: Iterable[str]) -> list[str]:
    """The packages of ``packages`` that dpkg does not have installed."""
    return [p for p in packages if "ok installed" not in subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout]


def install(packages: Iterable[str]) -> str | None:
    """Install the missing ones (``apt-get update`` once if the first try fails); what went
    wrong, or None."""
    need = missing(packages)
    if not need:
        return None
    if not shutil.which("apt-get"):
        return f"{', '.join(need)} missing and no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", *need]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    return None if done.returncode == 0 else f"cannot install {need}: {done.stderr[-1000:]}"
