"""Waiting for Neutron to mark pods' ports ACTIVE, with one Neutron call per interval however
many pods start at once.

A KuryrPort whose port is not ACTIVE yet registers it here (``wait_for``) instead of polling
it itself. Every ``[kubernetes] port_active_poll`` seconds one ``GET /v2.0/ports?id=..&id=..``
(in chunks of ``CHUNK``) looks at every waiting port; a port now ACTIVE, or gone, triggers its
KuryrPort's handler again, which writes ``vif.is_active``. Polling port by port was measured to
slow Neutron's own work of marking ports ACTIVE down by more than half with 30 pods starting
(``benchmarks/pods.py``): the API worker that serves the polls is the one that processes
OVN's "port up" events.

Owns only the waiting list; the handler (``ports``) decides what an ACTIVE port means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kuryr import errors
from kuryr.controller import reacting
from kuryr.neutron import client

LOG = logging.getLogger(__name__)
CHUNK = 100  # port IDs per list call: about 4 KB of query string


class ActivePorts:
    """The ports the controller waits on, looked at together every ``interval`` seconds."""

    def __init__(self, neutron: client.Neutron, trigger: Callable[[reacting.Key], None], *,
                 interval: float) -> None:
        self._neutron = neutron
        self._trigger = trigger
        self._interval = interval
        self._waiting: dict[str, reacting.Key] = {}  # port ID -> the handler to run again
        self._wake = asyncio.Event()

    def wait_for(self, port_id: str, key: reacting.Key) -> None:
        """Run ``key``'s handler again once ``port_id`` is ACTIVE (or gone)."""
        self._waiting[port_id] = key
        self._wake.set()

    def forget(self, port_id: str) -> None:
        self._waiting.pop(port_id, None)

    def __len__(self) -> int:
        return len(self._waiting)

    async def run(self) -> None:
        """Look at the waiting ports every interval until cancelled; sleep while none wait."""
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._interval)
            try:
                await self.look()
            except errors.KuryrError as e:
                LOG.warning("looking at %d port(s) waiting for ACTIVE: %s; again in %g s",
                            len(self._waiting), e, self._interval)

    async def look(self) -> None:
        """One look at every waiting port. Raises TemporaryError (the rest stay waiting)."""
        ids = list(self._waiting)
        active: set[str] = set()
        present: set[str] = set()
        for start in range(0, len(ids), CHUNK):
            for port in await self._neutron.list_ports(id=ids[start:start + CHUNK]):
                present.add(port.id)
                if port.is_active:
                    active.add(port.id)
        for port_id in ids:
            if port_id in active or port_id not in present:
                key = self._waiting.pop(port_id, None)
                if key is not None:
                    self._trigger(key)
