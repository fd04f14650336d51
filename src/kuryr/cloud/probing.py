"""Looking at the running local cloud from outside: is a socket accepting, does the Neutron API
answer, is this host's OVN Controller agent alive, does the Octavia API list the OVN provider;
and waiting, with a bound, until it is.

Owns the readiness checks. Uses only the standard library (urllib, socket) so that a check
costs one connection. Does not start or stop anything.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from kuryr.cloud import commands, layout

OVN_CONTROLLER_AGENT_TYPES = ("OVN Controller agent", "OVN Controller Gateway agent")
AGENTS_URL = f"{layout.NEUTRON_URL}v2.0/agents"
PROVIDERS_URL = f"{layout.OCTAVIA_URL}v2/lbaas/providers"
OCTAVIA_PROVIDER = "ovn"
# Loopback only: never through an HTTP proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class ApiHealth:
    """What one GET /v2.0/agents said."""

    answering: bool
    agent_alive: bool
    detail: str

    @property
    def healthy(self) -> bool:
        return self.answering and self.agent_alive


def socket_accepts(path: pathlib.Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def api_health(*, host: str, timeout: float = 2.0) -> ApiHealth:
    """Ask Neutron for its agents; healthy when ``host``'s OVN Controller agent is alive."""
    request = urllib.request.Request(AGENTS_URL, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body: Any = json.load(response)
    except urllib.error.HTTPError as e:
        return ApiHealth(False, False, f"Neutron API answered HTTP {e.code}")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return ApiHealth(False, False, f"Neutron API not answering ({reason})")
    agents = body.get("agents", []) if isinstance(body, dict) else []
    mine = [a for a in agents if isinstance(a, dict)
            and a.get("agent_type") in OVN_CONTROLLER_AGENT_TYPES and a.get("host") == host]
    if not mine:
        return ApiHealth(True, False, f"no OVN Controller agent for host {host} yet")
    alive = any(a.get("alive") is True for a in mine)
    state = "alive" if alive else "not alive"
    return ApiHealth(True, alive, f"OVN Controller agent on {host} {state}")


@dataclasses.dataclass(frozen=True)
class OctaviaHealth:
    """What one GET /v2/lbaas/providers said."""

    answering: bool
    providers: tuple[str, ...]
    detail: str

    @property
    def healthy(self) -> bool:
        return self.answering and OCTAVIA_PROVIDER in self.providers


def octavia_health(*, timeout: float = 2.0) -> OctaviaHealth:
    """Ask Octavia for its providers; healthy when ``ovn`` is among them."""
    request = urllib.request.Request(PROVIDERS_URL, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body: Any = json.load(response)
    except urllib.error.HTTPError as e:
        return OctaviaHealth(False, (), f"Octavia API answered HTTP {e.code}")
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return OctaviaHealth(False, (), f"Octavia API not answering ({reason})")
    listed = body.get("providers", []) if isinstance(body, dict) else []
    names = tuple(str(p.get("name")) for p in listed if isinstance(p, dict))
    shown = ", ".join(names) or "none"
    return OctaviaHealth(True, names, f"Octavia providers: {shown}")


def wait_for(what: str, check: Callable[[], bool], *, timeout: float,
             alive: Callable[[], None] | None = None, log: pathlib.Path | None = None,
             interval: float = 0.05) -> None:
    """Poll ``check`` until it is true.

    ``alive`` raises (CloudError) when the process being waited for has died. Raises
    CloudError naming ``what`` and ``log`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise commands.failure(what, f"not ready after {timeout:.0f} s", log)
        time.sleep(interval)
