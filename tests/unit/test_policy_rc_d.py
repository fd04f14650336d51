"""While ``kuryr cloud up`` installs Debian packages, a policy-rc.d of its own keeps their
services from starting; it never outlives the install, whether the install ends, fails, is
stopped by a signal, or (SIGKILL) the next run finds it; and a policy-rc.d that kuryr did not
write is never touched. Here on a file in a temporary directory: no apt, no cloud."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from kuryr.cloud import installing

# What kuryr wrote before it marked its file: still recognised as its own.
EARLIER = "#!/bin/sh\n# Written by kuryr cloud up during apt-get install.\nexit 101\n"
FOREIGN = "#!/bin/sh\n# the operator's own: no service starts in this chroot\nexit 101\n"


def denies_starts(path: pathlib.Path) -> bool:
    """Whether ``path`` answers invoke-rc.d as policy-rc.d does to deny (exit 101)."""
    done = subprocess.run([str(path), "openvswitch-switch", "start"], check=False)
    return done.returncode == 101


def test_it_denies_service_starts_during_the_block_and_goes_after(
        tmp_path: pathlib.Path) -> None:
    path = tmp_path / "policy-rc.d"
    handlers = [signal.getsignal(s) for s in installing.STOPPING_SIGNALS]
    with installing.services_not_started(path):
        assert denies_starts(path)
        assert installing.POLICY_RC_D_MARK in path.read_text()
    assert not path.exists()
    assert [signal.getsignal(s) for s in installing.STOPPING_SIGNALS] == handlers
    with pytest.raises(RuntimeError), installing.services_not_started(path):
        raise RuntimeError("apt-get install failed")
    assert not path.exists()


@pytest.mark.parametrize("left", [EARLIER, None], ids=["earlier-kuryr", "this-kuryr"])
def test_one_left_by_a_killed_run_is_removed_before_installing(
        tmp_path: pathlib.Path, left: str | None) -> None:
    """SIGKILL during apt leaves the file behind: the next run removes it first."""
    path = tmp_path / "policy-rc.d"
    path.write_text(left or installing.POLICY_RC_D_TEXT)
    assert installing.remove_stale_policy_rc_d(path)
    assert not path.exists()
    path.write_text(left or installing.POLICY_RC_D_TEXT)
    with installing.services_not_started(path):
        assert denies_starts(path)
    assert not path.exists()


def test_one_kuryr_did_not_write_is_left_as_it_is(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "policy-rc.d"
    path.write_text(FOREIGN)
    path.chmod(0o750)
    assert not installing.remove_stale_policy_rc_d(path)
    with installing.services_not_started(path):
        assert path.read_text() == FOREIGN
    assert path.read_text() == FOREIGN and path.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_the_install_removes_it(tmp_path: pathlib.Path, signum: int) -> None:
    """kill (or a closed terminal) during apt-get: the process still ends as it was told,
    and its policy-rc.d goes with it."""
    path = tmp_path / "policy-rc.d"
    script = textwrap.dedent("""
        import pathlib, sys, time
        from kuryr.cloud import installing
        with installing.services_not_started(pathlib.Path(sys.argv[1])):
            print("installing", flush=True)
            time.sleep(30)
    """)
    process = subprocess.Popen([sys.executable, "-c", script, str(path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "installing\n"
        assert path.exists()
        os.kill(process.pid, signum)
        returncode = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode in (-signum, 128 + signum), returncode
    assert not path.exists()
