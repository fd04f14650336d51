"""Packets between namespaces, as a user would check them: ping and TCP data."""

from __future__ import annotations

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ping(netns: str, address: str, *, count: int = 2, wait: float = 2) -> bool:
    argv = ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W",
            str(int(wait)), address]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def ping_eventually(netns: str, address: str, *, expect: bool, within: float = 10) -> bool:
    """Whether ping reached the ``expect``ed outcome within ``within`` seconds (ACLs and
    flows take a moment to settle)."""
    deadline = time.monotonic() + within
    while True:
        if ping(netns, address, count=1, wait=1) == expect:
            return True
        if time.monotonic() > deadline:
            return False


def tcp_exchange(server_ns: str, client_ns: str, address: str, port: int, *,
                 nbytes: int = 1_000_000, timeout: float = 3) -> tuple[bool, str]:
    """Serve in ``server_ns``, send ``nbytes`` from ``client_ns`` and get as many back.
    Returns (whether all bytes went both ways, what the client said)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    bind = "::" if ":" in address else "0.0.0.0"
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, sys.executable, "-m", "tests.support.tcp", "serve",
         bind, str(port)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(
            ["ip", "netns", "exec", client_ns, sys.executable, "-m", "tests.support.tcp", "send",
             address, str(port), str(nbytes), str(timeout)], capture_output=True, text=True,
            env=env, timeout=timeout + 30)
        said = client.stdout.strip()
        return client.returncode == 0 and said == f"sent={nbytes} received={nbytes}", said
    finally:
        server.kill()
        server.wait()
