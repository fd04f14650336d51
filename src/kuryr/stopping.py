"""Stopping a long-lived kuryr process (daemon, Docker driver) on SIGTERM or SIGINT.

Not ``loop.add_signal_handler``: its wakeup fd is inherited by the children pyroute2 forks for
namespace work, so a SIGTERM to such a child (pyroute2 sends one when it closes a netns socket)
would stop the parent. The handler here checks the pid: a child dies as it should, the parent
sets the stop event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

LOG = logging.getLogger(__name__)


def on_signals(stop: asyncio.Event, *, name: str) -> None:
    """Set ``stop`` (thread-safely, in the running loop) on SIGTERM or SIGINT to this process."""
    loop = asyncio.get_running_loop()
    owner_pid = os.getpid()

    def handle(signum: int, frame: object) -> None:
        if os.getpid() != owner_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        LOG.info("%s stopping on %s", name, signal.Signals(signum).name)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def run_service(name: str, serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a long-lived service (``serve(stop)``) with INFO logging until SIGTERM or SIGINT."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        on_signals(stop, name=name)
        await serve(stop)
        LOG.info("%s stopped", name)

    asyncio.run(main())
