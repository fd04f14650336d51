"""Ports being released in the background after a fast DEL: DEL answers once the host side is
unplugged, and the Neutron work (delete, or recycle into the pool) runs here, one task per port
ID. Work is keyed by port ID, never by owner tags, so a new port of the same container (an ADD
right after the DEL) is never touched.

The durable record of "this port is being released" is that its OVS port is gone: a daemon that
dies with releases pending finds those ports again at start-up (``Standalone.recover``). Owns
only the tasks; what a release does is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kuryr import errors

LOG = logging.getLogger(__name__)


class Releases:
    """Background releases by port ID."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, port_id: object) -> bool:
        return port_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, port_id: str, release: Callable[[], Awaitable[None]]) -> None:
        """Run ``release`` in the background unless a release of ``port_id`` already runs.
        Failures are logged: the port stays unplugged and start-up recovery or GC retries."""
        if port_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(port_id, release))
        self._tasks[port_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(port_id, None))

    async def _run(self, port_id: str, release: Callable[[], Awaitable[None]]) -> None:
        try:
            await release()
        except errors.KuryrError as e:
            LOG.warning("background release of port %s failed: %s; it stays unplugged and is "
                        "released by GC or at the next start", port_id, e)
        except Exception:  # a bug must not kill the loop's other work
            LOG.exception("background release of port %s failed", port_id)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for pending releases, then cancel the rest (they are
        found again at the next start)."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            LOG.warning("%d background release(s) cancelled at shutdown; they are finished at "
                        "the next start", len(pending))
