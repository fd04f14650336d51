"""The local cloud commits OVN's stateful ACL connections without an all-zero SNAT: Open
vSwitch 3.1.0's userspace conntrack aborts on that path (``provisioning.disable_zero_snat``),
and a restarted ovs-vswitchd reports the capability again, which ``kuryr cloud up`` turns
off once more."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from kuryr import settings
from kuryr.cloud import layout

STATE = pathlib.Path(os.environ.get("KURYR_CLOUD_STATE_DIR") or settings.DEFAULT_STATE_DIR)


def _ovs(*argv: str) -> str:
    cloud = layout.CloudLayout(STATE)
    done = subprocess.run([argv[0], *argv[1:]], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **cloud.tool_environment()}, check=True)
    return done.stdout


def test_stateful_acl_commits_carry_no_nat(cloud_config: settings.KuryrSettings) -> None:
    cloud = layout.CloudLayout(STATE)
    values = _ovs("ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--columns=capabilities",
                  "list", "Datapath")
    assert 'ct_zero_snat="false"' in values, values
    commits = [f for f in _ovs("ovs-ofctl", "dump-flows", layout.INTEGRATION_BRIDGE).splitlines()
               if "ct(commit" in f and "nat(src=" not in f]  # router SNAT keeps its address
    assert commits, "OVN installed no stateful commit to look at"
    assert not [f for f in commits if "nat(src)" in f], commits[:3]


def test_up_turns_it_off_again_after_the_switch_reports_it(
        cloud_config: settings.KuryrSettings) -> None:
    cloud = layout.CloudLayout(STATE)
    listed = _ovs("ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--bare", "--columns=_uuid",
                  "list", "Datapath").split()
    for uuid_ in listed:  # as a restarted ovs-vswitchd writes it
        _ovs("ovs-vsctl", f"--db={cloud.ovsdb_connection}", "set", "Datapath", uuid_,
             "capabilities:ct_zero_snat=true")
    up = subprocess.run([sys.executable, "-m", "kuryr", "cloud", "up"], capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert "zero SNAT turned off" in up.stdout + up.stderr
    values = _ovs("ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--columns=capabilities",
                  "list", "Datapath")
    assert 'ct_zero_snat="false"' in values
