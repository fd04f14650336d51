"""The README's main job: `kuryr demo up` shows two sandboxes on Neutron ports pinging over
IPv4 and IPv6, and `kuryr demo down` leaves no port, namespace or network behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kuryr import demo, settings
from kuryr.linux import namespaces
from kuryr.neutron import client


def _kuryr(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kuryr", *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.usefixtures("cloud_config")
async def test_demo_up_and_down(neutron: client.Neutron) -> None:
    try:
        up = _kuryr("demo", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.count("ok  ") == 4, up.stdout  # 2 sandboxes x (IPv4 + IPv6)
        assert "FAIL" not in up.stdout
        assert "kuryr demo down" in up.stdout
        ports = await neutron.list_ports(device_owner="compute:kuryr",
                                         tags=[demo.sandbox_tag(demo.SANDBOXES[0])])
        assert len(ports) == 1 and ports[0].status == "ACTIVE"
        again = _kuryr("demo", "up")  # idempotent: replaces the earlier sandboxes
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        down = _kuryr("demo", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(not namespaces.exists(name) for name in demo.SANDBOXES)
    assert await neutron.list_networks(tags=[demo.NETWORK_TAG]) == []
    for name in demo.SANDBOXES:
        assert await neutron.list_ports(tags=[demo.sandbox_tag(name)]) == []


def test_demo_without_neutron_configured_says_what_to_do(tmp_path: object) -> None:
    conf = f"{tmp_path}/empty.conf"
    with open(conf, "w") as f:
        f.write("[DEFAULT]\n")
    result = _kuryr("demo", "up", "--config", conf)
    assert result.returncode == 1
    assert "Error: Neutron is not configured" in result.stderr
    assert "Traceback" not in result.stderr
    assert isinstance(settings.load(conf), settings.KuryrSettings)
