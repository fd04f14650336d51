"""The CNI protocol without root or a cloud: requests parsed and rejected with the SPEC's codes,
results written in every supported version, prevResult read back, and the executable answering
VERSION and unreachable-daemon errors by itself, as a runtime runs it."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from kuryr import settings
from kuryr.cli import install_cni
from kuryr.cni import codes, protocol, results, shim

VERSIONS = protocol.SUPPORTED_VERSIONS
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "a" * 64, "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "IgnoreUnknown=1;K=v"}


def conf(version: str = "1.0.0", **extra: object) -> dict[str, object]:
    return {"cniVersion": version, "name": "net1", "type": "kuryr", "network": "private",
            **extra}


def code_of(env: dict[str, str], stdin: object) -> int:
    with pytest.raises(codes.CniError) as caught:
        protocol.parse_request(env, stdin if isinstance(stdin, str | bytes) else
                               json.dumps(stdin))
    return caught.value.code


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_add_is_parsed(version: str) -> None:
    request = protocol.parse_request(ENV, json.dumps(conf(
        version, subnet="s1", securityGroups=["web"], mtu=1400, daemonSocket="/x.sock")))
    assert request.command == "ADD" and request.ifname == "eth0"
    assert request.cni_args == {"IgnoreUnknown": "1", "K": "v"}
    assert request.config.security_groups == ("web",) and request.config.mtu == 1400
    assert request.config.daemon_socket == "/x.sock"


def test_kubernetes_mode_configuration_names_no_network() -> None:
    bare = {k: v for k, v in conf().items() if k != "network"}
    request = protocol.parse_request(ENV, json.dumps(bare), needs_network=False)
    assert request.config.network == ""
    assert code_of(ENV, bare) == codes.INVALID_CONFIG  # standalone mode needs one
    assert install_cni.conflist(name="kuryr", network=None)["plugins"] == [{"type": "kuryr"}]


@pytest.mark.parametrize("version", VERSIONS)
def test_errors_have_the_spec_codes(version: str) -> None:
    assert code_of(ENV, "{not json") == codes.DECODE_FAILURE
    assert code_of(ENV, "[1]") == codes.DECODE_FAILURE
    assert code_of(ENV, conf("9.9.9")) == codes.INCOMPATIBLE_VERSION
    assert code_of(ENV, {**conf(version), "network": ""}) == codes.INVALID_CONFIG
    assert code_of(ENV, conf(version, mtu="big")) == codes.INVALID_CONFIG
    assert code_of(ENV, conf(version, securityGroups="web")) == codes.INVALID_CONFIG
    assert code_of(ENV, {**conf(version), "name": "-bad"}) == codes.INVALID_CONFIG
    for missing in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"):
        env = {k: v for k, v in ENV.items() if k != missing}
        assert code_of(env, conf(version)) == codes.INVALID_ENVIRONMENT, missing
    assert code_of({**ENV, "CNI_COMMAND": "FOO"}, conf(version)) == codes.INVALID_ENVIRONMENT
    assert code_of({**ENV, "CNI_IFNAME": "x" * 16}, conf(version)) == codes.INVALID_ENVIRONMENT
    assert code_of({**ENV, "CNI_ARGS": "novalue"}, conf(version)) == codes.INVALID_ENVIRONMENT


def test_del_needs_no_netns_and_new_commands_need_new_versions() -> None:
    env = {**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert protocol.parse_request(env, json.dumps(conf())).netns == ""
    assert code_of({**ENV, "CNI_COMMAND": "CHECK"}, conf("0.3.1")) == \
        codes.INCOMPATIBLE_VERSION
    for command in ("STATUS", "GC"):
        assert code_of({"CNI_COMMAND": command}, conf("1.0.0")) == codes.INCOMPATIBLE_VERSION
    gc = protocol.parse_request({"CNI_COMMAND": "GC"}, json.dumps(conf("1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})))
    assert gc.config.valid_attachments == (protocol.AttachmentKey("c1", "eth0"),)


def sample() -> results.Result:
    return results.Result(
        interfaces=(results.Interface(name="eth0", mac="fa:16:3e:00:00:01",
                                      sandbox="/run/netns/x", mtu=1442),),
        ips=(results.IPConfig(address=ipaddress.ip_interface("10.0.0.5/24"),
                              gateway=ipaddress.ip_address("10.0.0.1"), interface=0),
             results.IPConfig(address=ipaddress.ip_interface("fd00::5/64"), interface=0)),
        routes=(results.Route(dst=ipaddress.ip_network("0.0.0.0/0"),
                              gw=ipaddress.ip_address("10.0.0.1")),),
        dns=results.Dns(nameservers=("10.0.0.2",)))


@pytest.mark.parametrize("version", VERSIONS)
def test_results_are_written_in_the_configs_version_and_read_back(version: str) -> None:
    wire = results.to_wire(sample(), version)
    assert wire["cniVersion"] == version
    old = protocol.version_tuple(version) < (1, 0, 0)
    assert all(("version" in ip) == old for ip in wire["ips"])
    assert ("mtu" in wire["interfaces"][0]) == (version == "1.1.0")
    assert wire["interfaces"][0]["mac"] == "fa:16:3e:00:00:01"
    back = results.from_wire(json.loads(json.dumps(wire)))
    assert back.ips == sample().ips and back.routes == sample().routes
    assert back.sandbox_interface("eth0") is not None


def test_merge_appends_to_an_earlier_plugins_result() -> None:
    earlier = results.Result(interfaces=(results.Interface(name="lo0"),))
    merged = results.merge(earlier, sample())
    assert [i.name for i in merged.interfaces] == ["lo0", "eth0"]
    assert {ip.interface for ip in merged.ips} == {1}
    with pytest.raises(codes.CniError):
        results.from_wire({"ips": [{"address": "nonsense"}]})


def test_exceptions_map_to_codes() -> None:
    from kuryr import errors

    assert codes.from_exception(errors.QuotaExceededError("q")).code == codes.QUOTA_EXCEEDED
    assert codes.from_exception(errors.NamespaceNotFoundError("n")).code == \
        codes.NETNS_NOT_FOUND
    assert codes.from_exception(errors.TemporaryError("t")).code == codes.NEUTRON_UNAVAILABLE
    assert codes.from_exception(RuntimeError("x")).code == codes.INTERNAL


# -- the executable, run as a runtime runs it ------------------------------------------------------
@pytest.fixture(scope="module")
def executable(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return install_cni.install_executable(tmp_path_factory.mktemp("bin"))


def run(executable: pathlib.Path, env: dict[str, str],
        stdin: bytes) -> tuple[int, dict[str, object]]:
    done = subprocess.run([str(executable)], input=stdin, capture_output=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", **env})
    return done.returncode, json.loads(done.stdout)


def test_version_is_answered_alone_and_fast(executable: pathlib.Path) -> None:
    first = executable.read_text().splitlines()[0]
    assert first.endswith(" -IS") and os.path.realpath(first[2:-4]) == first[2:-4]
    rc, out = run(executable, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert rc == 0 and out["supportedVersions"] == list(VERSIONS)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        run(executable, {"CNI_COMMAND": "VERSION"}, b"{}")
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.05, timings


@pytest.mark.parametrize("version", VERSIONS)
def test_unreachable_daemon_is_try_again_later(executable: pathlib.Path, tmp_path: pathlib.Path,
                                               version: str) -> None:
    stdin = json.dumps(conf(version, daemonSocket=str(tmp_path / "none.sock"))).encode()
    rc, out = run(executable, ENV, stdin)
    assert rc == 1 and out["code"] == codes.TRY_AGAIN_LATER and out["cniVersion"] == version
    assert "kuryr daemon is not running" in str(out["msg"])
    rc, out = run(executable, {"CNI_COMMAND": "STATUS"}, stdin)
    assert rc == 1 and out["code"] == codes.NOT_AVAILABLE
    rc, out = run(executable, ENV, b"{garbage")
    assert rc == 1 and out["code"] == codes.DECODE_FAILURE


# -- how long the executable waits for the daemon -------------------------------------------------
@contextlib.contextmanager
def answering_daemon(*, after: float, status: int, body: dict[str, object]
                     ) -> Iterator[str]:
    """A unix socket that answers one request as the daemon's wire does (HTTP ``status``, a
    JSON ``body``), ``after`` seconds late, as a daemon busy with its own bounded waits."""
    directory = tempfile.mkdtemp(prefix="kt-shim-")
    path = os.path.join(directory, "d.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                time.sleep(after)
                payload = json.dumps(body).encode()
                connection.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        listener.close()
        thread.join(timeout=after + 5)
        shutil.rmtree(directory, ignore_errors=True)


def test_the_executable_waits_longer_than_the_daemon_bounds_a_request() -> None:
    """The daemon's own waits in one ADD (with its default settings): the container's lock,
    the VIF (Kubernetes mode) or the port's creation, the port's lock, readiness. The
    executable must outwait them all, so that the runtime hears the daemon's own answer."""
    daemon = settings.CniDaemonSettings()
    waits = 2 * daemon.lock_timeout + 2 * max(daemon.vif_timeout, daemon.port_active_timeout)
    assert waits < shim.DEFAULT_TIMEOUT, (shim.DEFAULT_TIMEOUT, waits)


def test_a_busy_daemon_answers_before_the_configured_timeout(executable: pathlib.Path) -> None:
    """The daemon's own code 11 (here: busy) reaches the runtime: the conflist's timeout
    (longer than the daemon's bounds) wins over a shorter $KURYR_CNI_TIMEOUT."""
    busy = codes.CniError(codes.TRY_AGAIN_LATER, "the kuryr daemon is busy: another request "
                          "for container x is still running after 1 s").to_wire("1.0.0")
    with answering_daemon(after=1.5, status=503, body=busy) as path:
        stdin = json.dumps(conf(daemonSocket=path, timeout=8)).encode()
        rc, out = run(executable, {**ENV, "KURYR_CNI_TIMEOUT": "0.5"}, stdin)
    assert (rc, out) == (1, busy)


def test_a_daemon_that_does_not_answer_in_time_is_try_again_later(
        executable: pathlib.Path) -> None:
    with answering_daemon(after=4, status=200, body={}) as path:
        started = time.monotonic()
        rc, out = run(executable, ENV, json.dumps(conf(daemonSocket=path, timeout=0.5)).encode())
        took = time.monotonic() - started
    assert rc == 1 and out["code"] == codes.TRY_AGAIN_LATER, out
    assert "did not answer within 0.5 s" in str(out["msg"]) and took < 3, (out, took)


@pytest.mark.parametrize("timeout", ["soon", "300", 0, -1, True])
def test_a_timeout_that_is_not_a_positive_number_is_invalid_config(
        executable: pathlib.Path, timeout: object) -> None:
    rc, out = run(executable, ENV, json.dumps(conf(daemonSocket="/nonexistent.sock",
                                                   timeout=timeout)).encode())
    assert rc == 1 and out["code"] == codes.INVALID_CONFIG, out
    assert "timeout" in str(out["msg"])
    assert install_cni.conflist(name="n", network="x", timeout=300)["plugins"][0]["timeout"] == 300


def test_static_addresses_from_cni_args() -> None:
    env = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.0.5,fd00::5;"
                              "MAC=02:00:00:AA:bb:cc"}
    request = protocol.parse_request(env, json.dumps(conf()))
    assert request.ips == (ipaddress.ip_address("10.1.0.5"), ipaddress.ip_address("fd00::5"))
    assert request.mac == "02:00:00:aa:bb:cc" and request.is_static
    assert request.cni_args["K8S_POD_NAME"] == "p"  # other args keep working
    plain = protocol.parse_request(ENV, json.dumps(conf()))
    assert plain.ips == () and plain.mac is None and not plain.is_static


def test_static_addresses_from_runtime_config_win_over_cni_args() -> None:
    env = {**ENV, "CNI_ARGS": "IP=10.1.0.5;MAC=02:00:00:00:00:01"}
    runtime = {"ips": ["10.1.0.7/24", "fd00::7/64"], "mac": "02:00:00:00:00:02"}
    request = protocol.parse_request(env, json.dumps(conf(runtimeConfig=runtime)))
    assert [str(ip) for ip in request.ips] == ["10.1.0.7", "fd00::7"]
    assert request.mac == "02:00:00:00:00:02"
    only_mac = protocol.parse_request(
        env, json.dumps(conf(runtimeConfig={"mac": "02:00:00:00:00:03"})))
    assert [str(ip) for ip in only_mac.ips] == ["10.1.0.5"]
    assert only_mac.mac == "02:00:00:00:00:03"


@pytest.mark.parametrize("args", ["IP=10.1.0.300", "IP=nope", "MAC=01:00:00:00:00:01",
                                  "MAC=02:00:00:00:00", "IP=10.1.0.5,10.1.0.5"])
def test_bad_static_addresses_in_cni_args_are_code_4(args: str) -> None:
    with pytest.raises(codes.CniError) as caught:
        protocol.parse_request({**ENV, "CNI_ARGS": args}, json.dumps(conf()))
    assert caught.value.code == codes.INVALID_ENVIRONMENT
    assert args.split("=", 1)[1] in caught.value.msg  # the message names what was given


def test_del_with_a_bad_static_address_still_parses() -> None:
    env = {**ENV, "CNI_COMMAND": "DEL", "CNI_ARGS": "IP=nope;MAC=zz"}
    request = protocol.parse_request(env, json.dumps(conf()))
    assert request.command == "DEL" and not request.is_static


@pytest.mark.parametrize("runtime", [{"ips": "10.1.0.5"}, {"ips": ["10.1.0.x"]},
                                     {"mac": "zz:00:00:00:00:01"}, {"mac": 5}, []])
def test_bad_static_addresses_in_runtime_config_are_code_7(runtime: object) -> None:
    assert code_of(ENV, conf(runtimeConfig=runtime)) == codes.INVALID_CONFIG


def test_conflist_declares_the_static_address_capabilities() -> None:
    plugin = install_cni.conflist(name="n", network="x")["plugins"][0]
    assert plugin["capabilities"] == {"ips": True, "mac": True}
