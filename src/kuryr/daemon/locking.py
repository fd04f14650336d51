"""Per-container serialisation: ADD, DEL and CHECK of one container run one after the other,
different containers in parallel. Owns only the locks; what runs under them is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from kuryr.cni import codes


class KeyedLocks:
    """One asyncio lock per key, created on first use and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def is_held(self, key: str) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def hold(self, key: str, *, timeout: float) -> AsyncIterator[None]:
        """Hold the lock of ``key``. Raises TemporaryError when it is not free within
        ``timeout`` seconds: CniError 11, try again later."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except TimeoutError:
                raise codes.CniError(
                    codes.TRY_AGAIN_LATER, f"the kuryr daemon is busy: another request for "
                    f"container {key} is still running after {timeout:g} s",
                    "try again later") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]
