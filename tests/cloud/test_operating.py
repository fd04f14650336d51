"""The operators' commands (``kuryr ports``, ``kuryr status``) run as a user runs them, as a
subprocess against the real local cloud, on ports and faults planted here with unique names
and removed at teardown whatever happens.

These tests read the running local cloud's settings and never bring the cloud up or down."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kuryr import settings
from kuryr.linux import ovs
from kuryr.neutron import client, connecting, resources, tagging
from kuryr.ports import lifecycle
from tests.cloud import conftest as cloud_conftest
from tests.conftest import RUN_ID, unavailable
from tests.support import k8s

_CONF = pathlib.Path(os.environ.get("KURYR_CLOUD_STATE_DIR") or settings.DEFAULT_STATE_DIR,
                     "kuryr.conf")


@pytest.fixture(scope="module")
def cloud_config(root: None) -> settings.KuryrSettings:  # overrides: never `kuryr cloud up`
    if not _CONF.exists():
        unavailable(f"no local cloud here ({_CONF}): run kuryr cloud up first")
    return settings.load(_CONF, environ={})


def run_kuryr(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kuryr", *argv, "--config", str(_CONF)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
async def planted(neutron: client.Neutron, network: resources.Network,
                  cloud_config: settings.KuryrSettings) -> AsyncIterator[dict[str, str]]:
    """Three kuryr ports on the test network, none plugged: a CNI container's bound to this
    host (an orphan: no OVS interface), a pod's (namespace ``ns-<run>``) and a pool's."""
    host = cloud_config.binding.host
    container = uuid.uuid4().hex
    cni = await neutron.create_port(
        network.id, name=f"kt-{RUN_ID}-cni", host_id=host,
        device_owner=lifecycle.DEVICE_OWNER,
        tags=[cloud_conftest.TEST_TAG, tagging.owner("cni-container", container),
              tagging.owner("cni-ifname", "eth0"), tagging.owner("cni-network", "kt")])
    pod_uid = str(uuid.uuid4())
    pod = await neutron.create_port(
        network.id, name=f"ns-{RUN_ID}/pod-a", host_id="kt-other-node",
        device_owner=lifecycle.DEVICE_OWNER, device_id=pod_uid,
        tags=[cloud_conftest.TEST_TAG, tagging.owner("pod-uid", pod_uid)])
    pool = await neutron.create_port(
        network.id, name=f"kuryr-pool-{host}", host_id=host,
        device_owner=lifecycle.DEVICE_OWNER,
        tags=[cloud_conftest.TEST_TAG, tagging.owner("pool-host", host),
              tagging.owner("pool", f"kt-{RUN_ID}")])
    yield {"cni": cni.id, "pod": pod.id, "pool": pool.id, "container": container,
           "host": host}
    # the network fixture deletes the ports with the network


def _by_id(out: str) -> dict[str, dict[str, object]]:
    return {p["id"]: p for p in json.loads(out)["ports"]}


async def test_ports_lists_owners_hosts_and_orphans(planted: dict[str, str]) -> None:
    done = run_kuryr("ports", "--output", "json")
    assert done.returncode == 0, done.stderr
    ports = _by_id(done.stdout)
    cni, pod, pool = ports[planted["cni"]], ports[planted["pod"]], ports[planted["pool"]]
    assert (cni["owner_kind"], cni["owner"]) == ("cni", f"{planted['container'][:12]}/eth0")
    assert cni["host"] == planted["host"] and cni["status"] == "DOWN"
    assert cni["orphan"] is True and "no OVS interface" in str(cni["orphan_reason"])
    assert (pod["owner_kind"], pod["owner"], pod["namespace"]) == (
        "pod", f"ns-{RUN_ID}/pod-a", f"ns-{RUN_ID}")
    assert pod["orphan"] is None  # no Kubernetes API configured: undecided
    assert pool["owner_kind"] == "pool" and pool["orphan"] is False
    for p in (cni, pod, pool):
        assert p["addresses"] and isinstance(p["age_seconds"], float)


async def test_ports_filters(planted: dict[str, str]) -> None:
    orphans = _by_id(run_kuryr("ports", "-o", "json", "--orphans").stdout)
    assert planted["cni"] in orphans
    assert planted["pod"] not in orphans and planted["pool"] not in orphans
    in_namespace = _by_id(run_kuryr("ports", "-o", "json", "--namespace", f"ns-{RUN_ID}").stdout)
    assert list(in_namespace) == [planted["pod"]]
    on_other = _by_id(run_kuryr("ports", "-o", "json", "--node", "kt-other-node").stdout)
    assert planted["pod"] in on_other and planted["cni"] not in on_other


async def test_ports_table(planted: dict[str, str]) -> None:
    done = run_kuryr("ports")
    assert done.returncode == 0, done.stderr
    header, *lines = done.stdout.splitlines()
    assert header.split() == ["PORT", "OWNER", "KIND", "HOST", "STATUS", "ADDRESSES", "AGE",
                              "ORPHAN"]
    row = next(line for line in lines if line.startswith(planted["cni"]))
    assert f"{planted['container'][:12]}/eth0" in row and "DOWN" in row
    assert row.split()[-1] == "yes"


def run_status(*argv: str, env: dict[str, str] | None = None
               ) -> tuple[int, dict[str, dict[str, object]], dict[str, object]]:
    """Exit code, the checks by name (the last of a name: CNI has one per conflist), and
    the whole JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "kuryr", "status", "-o", "json", "--config", str(_CONF), *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    answer = json.loads(done.stdout)
    return done.returncode, {c["name"]: c for c in answer["checks"]}, answer


def install_cni(bin_dir: pathlib.Path, conf_dir: pathlib.Path, *, network: str) -> None:
    """``kuryr install-cni`` into private dirs (the executable and a conflist kt-<run>)."""
    done = subprocess.run(
        [sys.executable, "-m", "kuryr", "install-cni", "--bin-dir", str(bin_dir),
         "--conf-dir", str(conf_dir), "--network", network, "--name", f"kt-{RUN_ID}"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_of_the_local_cloud(cloud_config: settings.KuryrSettings,
                                         tmp_path: pathlib.Path) -> None:
    code, checks, answer = run_status("--cni-conf-dir", str(tmp_path))
    assert checks["neutron"]["state"] == "ok" and checks["neutron"]["version"] == "v2.0"
    assert checks["neutron"]["missing_extensions"] == []
    assert checks["ovn-controller"]["state"] == "ok"
    assert checks["ovs"]["state"] == "ok"
    assert checks["cni"]["state"] == "off"
    assert answer["host"] == cloud_config.binding.host
    assert code == (0 if answer["healthy"] else 1)
    table = subprocess.run([sys.executable, "-m", "kuryr", "status", "--config", str(_CONF)],
                           capture_output=True, text=True, timeout=60)
    assert "ovn-controller" in table.stdout and "chassis" in table.stdout


def test_status_fails_on_a_host_that_is_no_chassis_and_a_missing_bridge(
        cloud_config: settings.KuryrSettings) -> None:
    code, checks, answer = run_status(env={"KURYR_BINDING_HOST": f"kt-{RUN_ID}-nochassis",
                                           "KURYR_BINDING_OVS_BRIDGE": f"kt-{RUN_ID}-nobr"})
    assert code == 1 and answer["healthy"] is False
    assert checks["ovn-controller"]["state"] == "fail"
    assert cloud_config.binding.host in checks["ovn-controller"]["chassis_hosts"]  # type: ignore[operator]
    assert checks["ovs"]["state"] == "fail" and f"kt-{RUN_ID}-nobr" in str(
        checks["ovs"]["detail"])


def test_status_cni_executable_answers_version(cloud_config: settings.KuryrSettings,
                                                     tmp_path: pathlib.Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    install_cni(bin_dir, conf_dir, network="kt-net")
    _, checks, _ = run_status("--cni-conf-dir", str(conf_dir), "--cni-bin-dir", str(bin_dir))
    assert checks["cni"]["state"] == "ok", checks["cni"]
    assert "VERSION answers" in str(checks["cni"]["detail"])
    code, checks, _ = run_status("--cni-conf-dir", str(conf_dir),
                                 "--cni-bin-dir", str(tmp_path / "empty"))
    assert code == 1 and checks["cni"]["state"] == "fail"
    assert "no kuryr executable" in str(checks["cni"]["detail"])


def test_status_fails_on_sockets_nobody_answers(cloud_config: settings.KuryrSettings,
                                                      tmp_path: pathlib.Path) -> None:
    # Bound, never listening: what a crashed daemon leaves behind.
    with socket.socket(socket.AF_UNIX) as docker_sock, socket.socket(socket.AF_UNIX) as cni:
        docker_sock.bind(str(tmp_path / "kuryr.sock"))
        cni.bind(str(tmp_path / "kuryr-cni.sock"))
        code, checks, _ = run_status(env={
            "KURYR_LIBNETWORK_SOCKET_PATH": str(tmp_path / "kuryr.sock"),
            "KURYR_CNI_DAEMON_SOCKET": str(tmp_path / "kuryr-cni.sock"),
            "KURYR_CNI_DAEMON_HEALTH_PORT": str(_free_port())})
    assert code == 1
    assert checks["docker-plugin"]["state"] == "fail"
    assert "Plugin.Activate" in str(checks["docker-plugin"]["detail"])
    assert checks["cni-daemon"]["state"] == "fail"


def run_doctor(*argv: str) -> tuple[int, list[dict[str, str]]]:
    done = subprocess.run(
        [sys.executable, "-m", "kuryr", "doctor", "-o", "json", "--config", str(_CONF), *argv],
        capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)["findings"]


def _about(findings: list[dict[str, str]], check: str, subject: str) -> list[dict[str, str]]:
    return [f for f in findings if f["check"] == check and subject in f["subject"]]


@pytest.fixture
async def sdk(cloud_config: settings.KuryrSettings) -> AsyncIterator[Any]:
    conn = connecting.connect(cloud_config.neutron)
    yield conn
    conn.close()


async def test_doctor_names_planted_faults(neutron: client.Neutron, network: resources.Network,
                                           cloud_config: settings.KuryrSettings, sdk: Any,
                                           tmp_path: pathlib.Path) -> None:
    # A port bound to a host that is no OVN chassis: DOWN for good.
    unbound = await neutron.create_port(
        network.id, name=f"kt-{RUN_ID}-nochassis", host_id=f"kt-{RUN_ID}-nochassis",
        device_owner=lifecycle.DEVICE_OWNER,
        tags=[cloud_conftest.TEST_TAG, tagging.owner("cni-container", uuid.uuid4().hex)])
    # A compute:kuryr port nothing of kuryr's tagged (made past the facade, which tags).
    untagged = await asyncio.to_thread(
        sdk.network.create_port, network_id=network.id, name=f"kt-{RUN_ID}-untagged",
        device_owner=lifecycle.DEVICE_OWNER)
    # kuryr's OVS interface for a Neutron port that does not exist.
    db = ovs.Ovsdb(cloud_config.binding.ovsdb_connection)
    stale = f"kt{RUN_ID}stale"
    await asyncio.to_thread(db.add_port, cloud_config.binding.ovs_bridge, stale,
                            external_ids={"iface-id": str(uuid.uuid4())})
    # ... and one for a port that exists, with no veth: its netns went away without a DEL.
    no_veth = f"kt{RUN_ID}noveth"
    await asyncio.to_thread(db.add_port, cloud_config.binding.ovs_bridge, no_veth,
                            external_ids={"iface-id": unbound.id})
    # A conflist naming a network Neutron does not have.
    conf_dir = tmp_path / "net.d"
    install_cni(tmp_path / "bin", conf_dir, network=f"kt-{RUN_ID}-missing")
    try:
        code, findings = run_doctor("--down-after", "0", "--cni-conf-dir", str(conf_dir))
    finally:
        await asyncio.to_thread(db.delete_port, stale)
        await asyncio.to_thread(db.delete_port, no_veth)
        await asyncio.to_thread(db.close)
    assert code == 1
    [down] = _about(findings, "port-down", unbound.id)
    assert "is no OVN chassis" in down["finding"] and "[binding] host" in down["fix"]
    assert _about(findings, "untagged-port", untagged.id)
    [iface] = _about(findings, "stale-ovs-interface", stale)
    assert "del-port" in iface["fix"] and "which is gone" in iface["finding"]
    [lost] = _about(findings, "stale-ovs-interface", no_veth)
    assert "has no veth" in lost["finding"] and unbound.id in lost["finding"]
    [conflist] = _about(findings, "cni-network-missing", str(conf_dir))
    assert f"kt-{RUN_ID}-missing" in conflist["finding"]


async def test_doctor_names_quota_and_subnet_exhaustion(
        neutron: client.Neutron, cloud_config: settings.KuryrSettings, sdk: Any) -> None:
    project = f"kt{RUN_ID}quota"
    net = await neutron.create_network(f"kt-{RUN_ID}-small", tags=[cloud_conftest.TEST_TAG])
    try:
        # A /29: five addresses in its allocation pool, all taken; a project with room for
        # exactly the two ports it has.
        subnet = await neutron.create_subnet(net.id, cidr="10.199.7.0/29", ip_version=4,
                                             tags=[cloud_conftest.TEST_TAG])
        await neutron.update_quota(project, ports=2)
        for i in range(5):
            await neutron.create_port(
                net.id, name=f"kt-{RUN_ID}-fill{i}", device_owner=lifecycle.DEVICE_OWNER,
                project_id=project if i < 2 else None,
                tags=[cloud_conftest.TEST_TAG, tagging.owner("cni-container", f"kt{i}")])
        code, findings = run_doctor()
    finally:
        await cloud_conftest.remove_network(neutron, cloud_config, net.id)
        await asyncio.to_thread(sdk.network.delete_quota, project)
    assert code == 1
    [quota] = _about(findings, "quota", project)
    assert quota["severity"] == "fail" and "port quota: 2 of 2 used" in quota["finding"]
    [full] = _about(findings, "subnet-exhaustion", subnet.id)
    assert "5 of 5 addresses used" in full["finding"] and full["severity"] == "fail"


def test_openstack_client_after_cloud_env(cloud_config: settings.KuryrSettings) -> None:
    """The README's look-around: `eval "$(kuryr cloud env)"; openstack port list ...` with
    nothing but the system's PATH to start from."""
    kuryr = pathlib.Path(sys.executable).with_name("kuryr")
    if not pathlib.Path(sys.executable).with_name("openstack").exists():
        unavailable("the openstack client is not installed beside kuryr (make setup)")
    done = subprocess.run(
        ["bash", "-c", f'eval "$({kuryr} cloud env)" && '
         "openstack port list --device-owner compute:kuryr -f json"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root")})
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def _conntest_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if line.startswith("kuryr-ct-")]


def _run_conntest(env: dict[str, str] | None = None
                  ) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "kuryr", "connectivity-test", "-o", "json", "--config",
         str(_CONF), "--cidr", "10.214.0.0/24"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_connectivity_test_passes_and_leaves_nothing(cloud_config: settings.KuryrSettings
                                                     ) -> None:
    conn = connecting.connect(cloud_config.neutron)
    try:
        code, answer = _run_conntest()
        results = {r["name"]: r for r in answer["results"]}
        assert code == 0 and answer["passed"], answer
        assert set(results) >= {"ping a -> b", "ping b -> a", "tcp a -> b", "tcp b -> a",
                                "security group blocks a -> b"}
        assert results["tcp a -> b"]["detail"] == "sent=1048576 received=1048576"
        network_id = next(r for r in answer["results"] if r["name"].startswith("set-up")
                          )["detail"].split()[-1]
        assert conn.network.find_network(network_id) is None, f"{network_id} left behind"
        assert not _conntest_namespaces()
    finally:
        conn.close()


def test_connectivity_test_fails_on_a_host_that_is_no_chassis(
        cloud_config: settings.KuryrSettings) -> None:
    conn = connecting.connect(cloud_config.neutron)
    before = {n.id for n in conn.network.networks(tags=["kuryr-connectivity-test=run"])}
    try:
        code, answer = _run_conntest({"KURYR_BINDING_HOST": f"kt-{RUN_ID}-nochassis",
                                      "KURYR_NEUTRON_PORT_ACTIVE_TIMEOUT": "3"})
        assert code == 1 and answer["passed"] is False
        [setup] = answer["results"]
        assert setup["name"].startswith("set-up") and not setup["passed"]
        after = {n.id for n in conn.network.networks(tags=["kuryr-connectivity-test=run"])}
        assert after <= before, "the failed run left its network behind"
        assert not _conntest_namespaces()
    finally:
        conn.close()


async def test_ports_orphans_of_pods_from_the_kubernetes_api(
        neutron: client.Neutron, network: resources.Network) -> None:
    """A pod's port is an orphan when the API does not list its pod (here the API double,
    over real HTTP; the CLI runs as a subprocess while the double serves in this loop)."""
    async with k8s.serve(namespaces=(f"ns-{RUN_ID}",)) as double:
        live = double.store.create(k8s.PODS, f"ns-{RUN_ID}", {
            "metadata": {"name": "live"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
        ports = {}
        for name, uid in (("live", live["metadata"]["uid"]), ("gone", str(uuid.uuid4()))):
            ports[name] = await neutron.create_port(
                network.id, name=f"ns-{RUN_ID}/{name}", host_id="n1",
                device_owner=lifecycle.DEVICE_OWNER, device_id=uid,
                tags=[cloud_conftest.TEST_TAG, tagging.owner("pod-uid", uid)])
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kuryr", "ports", "-o", "json", "--config", str(_CONF),
            "--api-root", double.url, "--namespace", f"ns-{RUN_ID}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), timeout=60)
    assert cli.returncode == 0, err.decode()
    listed = _by_id(out.decode())
    assert listed[ports["live"].id]["orphan"] is False
    assert listed[ports["gone"].id]["orphan"] is True
    assert "not in the Kubernetes API" in str(listed[ports["gone"].id]["orphan_reason"])


def test_status_sees_a_ready_cni_daemon(cloud_config: settings.KuryrSettings,
                                        tmp_path: pathlib.Path) -> None:
    # A daemon of its own on a private socket and health port, for a host no port of
    # anyone else's is bound to (its start-up releases this host's unplugged CNI ports).
    env = {"KURYR_CNI_DAEMON_SOCKET": str(tmp_path / "kuryr-cni.sock"),
           "KURYR_CNI_DAEMON_HEALTH_PORT": str(_free_port()),
           "KURYR_BINDING_HOST": f"kt-{RUN_ID}-daemon"}
    daemon = subprocess.Popen([sys.executable, "-m", "kuryr", "daemon", "--config", str(_CONF)],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            _, checks, _ = run_status(env=env)
            if checks["cni-daemon"]["state"] == "ok" or time.monotonic() > deadline:
                break
            assert daemon.poll() is None, daemon.communicate()[1][-2000:]
            time.sleep(0.5)
        assert checks["cni-daemon"]["state"] == "ok", checks["cni-daemon"]
        assert "ready (standalone mode)" in str(checks["cni-daemon"]["detail"])
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@pytest.mark.parametrize("after", [1.5, 3.0])
def test_connectivity_test_interrupted_leaves_nothing(cloud_config: settings.KuryrSettings,
                                                      after: float) -> None:
    """Ctrl-C (SIGINT) during the set-up or the checks: everything is swept all the same."""
    conn = connecting.connect(cloud_config.neutron)
    try:
        run = subprocess.Popen(
            [sys.executable, "-m", "kuryr", "connectivity-test", "--config", str(_CONF),
             "--cidr", "10.216.0.0/24"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        time.sleep(after)
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=120)
        assert run.returncode != 0
        assert not [n.name for n in conn.network.networks()
                    if n.name.startswith("kuryr-conntest-")]
        assert not [g.name for g in conn.network.security_groups()
                    if g.name.startswith("kuryr-conntest-")]
        assert not _conntest_namespaces()
    finally:
        conn.close()
