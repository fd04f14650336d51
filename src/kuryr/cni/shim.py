#!/usr/bin/python3 -IS
"""The ``kuryr`` CNI executable: what podman, containerd or a kubelet runs.

Standard library only and importing nothing from kuryr: ``kuryr install-cni`` copies this file
alone into the runtime's CNI bin dir with an interpreter line naming a real interpreter binary
started isolated and without site (``-IS``), because runtimes call VERSION for every plugin of
every network before and after each container.

VERSION is answered here, without the daemon and without importing json. ADD, DEL, CHECK,
STATUS and GC are forwarded to the kuryr daemon as one HTTP/1.1 request on its unix socket
(``POST /v1/cni`` with ``{"env": {CNI_*}, "config": <stdin>}``); the daemon's answer is printed
as is (a result, or a CNI error already in the configuration's version). Failures to reach the
daemon become CNI error 11 (try again later), or 50 for STATUS (plugin not available).

The socket is the configuration's ``daemonSocket``, else ``$KURYR_CNI_SOCKET``, else
``/run/kuryr/kuryr-cni.sock``. The wait for the daemon's answer is bounded by the
configuration's ``timeout`` (seconds), else ``$KURYR_CNI_TIMEOUT``, else ``DEFAULT_TIMEOUT``:
longer than the daemon's own bounds on one request with its default settings (the
container's lock, ``[cni_daemon] lock_timeout``; the VIF, ``vif_timeout``, or the port's
creation; the port's lock, ``lock_timeout`` again; readiness, ``vif_timeout`` or
``port_active_timeout``), so that the runtime hears the daemon's own answer (code 11 when one
of those waits ran out, with the daemon's work undone) rather than the connection cut under a
request the daemon is still serving. A daemon that does not answer within it is code 11 too.

It runs with the interpreter of the host it is installed on, which may be older than kuryr's
own (Python 3.7 or later): annotations stay unevaluated, and nothing newer is used.
"""

from __future__ import annotations

import os
import sys

VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
VERSION_REPLY = ('{"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", '
                 '"1.1.0"]}\n')
DEFAULT_SOCKET = "/run/kuryr/kuryr-cni.sock"
# 2 x lock_timeout (120 s) + 2 x vif_timeout (60 s) with the daemon's defaults, and a minute
# for its Neutron and OVSDB calls (tests/unit/test_cni_protocol.py holds it above the former).
DEFAULT_TIMEOUT = 420.0
FORWARDED = ("ADD", "DEL", "CHECK", "STATUS", "GC")
# CNI error codes used here (the daemon maps everything else).
INVALID_ENVIRONMENT, DECODE_FAILURE, INVALID_CONFIG = 4, 6, 7
TRY_AGAIN_LATER, NOT_AVAILABLE, INTERNAL = 11, 50, 100


def fail(version: str, code: int, msg: str, details: str = "") -> int:
    import json

    error: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        error["details"] = details
    sys.stdout.write(json.dumps(error) + "\n")
    return 1


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        sys.stdout.write(VERSION_REPLY)
        return 0
    import json

    version = "1.0.0"  # for errors before the configuration's own version is known
    try:
        config = json.loads(sys.stdin.buffer.read())
    except ValueError as e:
        return fail(version, DECODE_FAILURE, f"the network configuration on stdin is not JSON: {e}")
    if not isinstance(config, dict):
        return fail(version, DECODE_FAILURE, "the network configuration is not a JSON object")
    if config.get("cniVersion") in VERSIONS:
        version = config["cniVersion"]
    if command not in FORWARDED:
        return fail(version, INVALID_ENVIRONMENT,
                    f"CNI_COMMAND is {command!r}, not one of VERSION, {', '.join(FORWARDED)}")
    path = config.get("daemonSocket") or os.environ.get("KURYR_CNI_SOCKET") or DEFAULT_SOCKET
    unreachable = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
    timeout = config.get("timeout")
    if timeout is None:
        try:
            timeout = float(os.environ.get("KURYR_CNI_TIMEOUT") or DEFAULT_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_TIMEOUT
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        return fail(version, INVALID_CONFIG,
                    f'"timeout" must be a positive number of seconds, not {timeout!r}')
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    body = json.dumps({"env": env, "config": config}).encode()
    try:
        status, answer = post(str(path), body, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        return fail(version, unreachable, f"the kuryr daemon is not running: cannot connect to "
                    f"{path} ({e.strerror})", "start it with 'kuryr daemon' (as root)")
    except PermissionError as e:
        return fail(version, unreachable, f"no permission to connect to the kuryr daemon at "
                    f"{path} ({e.strerror})", "CNI plugins run as root")
    except TimeoutError:
        return fail(version, unreachable,
                    f"the kuryr daemon at {path} did not answer within {timeout:g} s",
                    'it may be overloaded or stuck; see its log. The "timeout" of the '
                    "network configuration (else $KURYR_CNI_TIMEOUT) bounds this wait")
    except OSError as e:
        return fail(version, unreachable, f"lost the connection to the kuryr daemon at {path}: "
                    f"{e}", "the daemon may have restarted; try again")
    if status == 200:
        if answer.strip():
            sys.stdout.write(answer.decode("utf-8", "replace"))
        return 0
    try:
        error = json.loads(answer)
    except ValueError:
        error = None
    if isinstance(error, dict) and isinstance(error.get("code"), int):
        sys.stdout.write(answer.decode("utf-8", "replace"))
        return 1
    return fail(version, TRY_AGAIN_LATER if status == 503 else INTERNAL,
                f"the kuryr daemon at {path} answered HTTP {status} without a CNI error",
                answer[:500].decode("utf-8", "replace"))


def post(path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST body to /v1/cni over a unix socket; returns (HTTP status, response body).
    Raises TimeoutError when the whole exchange takes longer than ``timeout`` seconds."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            head = (f"POST /v1/cni HTTP/1.1\r\nHost: kuryr\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n")
            s.sendall(head.encode() + body)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no complete answer in time")
                s.settimeout(left)  # the bound is on the whole answer, not on each read
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except socket.timeout as e:  # noqa: UP041  (not a TimeoutError before Python 3.10)
        raise TimeoutError(str(e)) from e
    response = b"".join(chunks)
    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {response[:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        payload = dechunk(payload)
    return int(parts[1]), payload


def dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        data = rest[size + 2:]
    return b"".join(out)


if __name__ == "__main__":
    sys.exit(main())
