"""Shared test support: root and local-cloud requirements, unique network namespaces, a
Neutron facade on the local cloud, and a test network torn down even when a test fails.

Tests that need root or the local cloud are skipped with the reason when they cannot run here;
with ``KURYR_TESTS_REQUIRE_REAL=1`` (set by CI) such a skip becomes a failure instead.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from kuryr import settings
from kuryr.linux import namespaces

REQUIRE_REAL = os.environ.get("KURYR_TESTS_REQUIRE_REAL") == "1"
RUN_ID = uuid.uuid4().hex[:6]


def unavailable(reason: str) -> None:
    """Skip (or, under CI's KURYR_TESTS_REQUIRE_REAL=1, fail) for an environmental reason."""
    if REQUIRE_REAL:
        pytest.fail(f"required real component unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root: creates network namespaces, veths and OVS ports")


def _state_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KURYR_CLOUD_STATE_DIR") or settings.DEFAULT_STATE_DIR)


@pytest.fixture(scope="session")
def cloud_config(root: None) -> settings.KuryrSettings:
    """The local cloud's settings, bringing the cloud up first (``kuryr cloud up``)."""
    if not shutil.which("apt-get") and not (_state_dir() / "kuryr.conf").exists():
        unavailable("no local cloud and no apt-get to install one")
    up = subprocess.run([sys.executable, "-m", "kuryr", "cloud", "up"], capture_output=True,
                        text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"kuryr cloud up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    return settings.load(_state_dir() / "kuryr.conf", environ={})


@pytest.fixture
def make_netns(root: None) -> Iterator[Callable[[], str]]:
    """A factory of fresh, uniquely named network namespaces, all removed at teardown."""
    made: list[str] = []

    def make() -> str:
        name = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        namespaces.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        namespaces.remove(name)


def netns_run(netns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace (as ``ip netns exec`` does)."""
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
async def neutron(cloud_config: settings.KuryrSettings) -> AsyncIterator[object]:
    from kuryr.neutron import client

    facade = client.Neutron.from_settings(cloud_config)
    yield facade
    facade.close()
