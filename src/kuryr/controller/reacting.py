"""The reactor: work on one object at a time, on different objects in parallel.

Owns scheduling, not meaning. A key names an object; ``trigger(key)`` asks for its handler to
run. Handlers are level-triggered: they read the object's latest state from an informer's
cache, so several changes that arrive while a handler runs collapse into one more run (the
per-object queue keeps order by never running one key twice at once). A handler returns None
when done or a delay to look again (polling a Neutron status); a ``TemporaryError`` is retried
with exponential backoff starting at its ``delay``; a ``PermanentError`` goes to
``on_permanent`` once and is not retried until the object changes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kuryr import errors

LOG = logging.getLogger(__name__)
Key = tuple[str, str, str]  # (kind, namespace or "", name)
Handler = Callable[[Key], Awaitable[float | None]]
OnPermanent = Callable[[Key, errors.PermanentError], Awaitable[None]]


class Reactor:
    """Runs ``handler(key)`` for triggered keys: serially per key, at most ``workers`` keys
    at once."""

    def __init__(self, handler: Handler, *, on_permanent: OnPermanent, workers: int = 16,
                 max_backoff: float = 30.0) -> None:
        self._handler = handler
        self._on_permanent = on_permanent
        self._slots = asyncio.Semaphore(workers)
        self._max_backoff = max_backoff
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._closed = False

    def trigger(self, key: Key, *, delay: float = 0.0) -> None:
        """Run the handler of ``key`` now (or after ``delay``); a run already under way is
        followed by one more."""
        if self._closed:
            return
        if delay > 0:
            if key not in self._timers:
                loop = asyncio.get_running_loop()
                self._timers[key] = loop.call_later(delay, self._fire, key)
            return
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        if key in self._running:
            self._dirty.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(
            self._run(key), name=f"kuryr {'/'.join(key)}")

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.trigger(key)

    @property
    def is_idle(self) -> bool:
        return not self._running and not self._timers

    async def close(self) -> None:
        """Cancel every run and timer."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, key: Key) -> None:
        again: float | None = None
        try:
            while True:
                self._dirty.discard(key)
                async with self._slots:
                    again = await self._attempt(key)
                if key not in self._dirty:
                    break
        finally:
            self._running.pop(key, None)
        if again is not None and not self._closed:
            self.trigger(key, delay=again)

    async def _attempt(self, key: Key) -> float | None:
        try:
            again = await self._handler(key)
        except errors.TemporaryError as e:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(e.delay * (1 << min(failures - 1, 10)), self._max_backoff)
            LOG.info("%s: %s; retrying in %.1f s", "/".join(key), e, delay)
            return delay
        except errors.PermanentError as e:
            self._failures.pop(key, None)
            LOG.error("%s: %s", "/".join(key), e)
            try:
                await self._on_permanent(key, e)
            except errors.KuryrError as report:
                LOG.warning("%s: cannot report failure: %s", "/".join(key), report)
            return None
        except Exception:
            # A bug in a handler must not stop the controller: log it and back off.
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            LOG.exception("%s: handler failed", "/".join(key))
            return min(float(1 << min(failures, 10)), self._max_backoff)
        self._failures.pop(key, None)
        return again
