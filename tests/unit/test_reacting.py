"""The controller's reactor: one object at a time, objects in parallel, changes that arrive
during a run coalesced into one more run, backoff on TemporaryError, a PermanentError
reported once."""

from __future__ import annotations

import asyncio

from kuryr import errors
from kuryr.controller import reacting


async def test_serial_per_object_parallel_across_objects_and_coalesced() -> None:
    running: set[reacting.Key] = set()
    overlap: list[reacting.Key] = []
    runs: list[str] = []
    peak = 0

    async def handle(key: reacting.Key) -> float | None:
        nonlocal peak
        if key in running:
            overlap.append(key)
        running.add(key)
        peak = max(peak, len(running))
        runs.append(key[2])
        await asyncio.sleep(0.05)
        running.discard(key)
        return None

    async def report(key: reacting.Key, error: errors.PermanentError) -> None:
        raise AssertionError(error)

    reactor = reacting.Reactor(handle, on_permanent=report, workers=4)
    reactor.trigger(("pod", "ns", "a"))
    reactor.trigger(("pod", "ns", "a"))  # before the run starts: that run sees it
    reactor.trigger(("pod", "ns", "b"))
    await asyncio.sleep(0.01)
    for _ in range(4):  # four changes of "a" while it runs: one more run, not four
        reactor.trigger(("pod", "ns", "a"))
    await asyncio.sleep(0.2)
    assert not overlap and peak == 2
    assert runs.count("a") == 2 and runs.count("b") == 1
    assert reactor.is_idle
    await reactor.close()


async def test_temporary_errors_back_off_and_permanent_errors_are_reported_once() -> None:
    attempts: dict[str, int] = {"flaky": 0, "broken": 0}
    reported: list[str] = []

    async def handle(key: reacting.Key) -> float | None:
        attempts[key[2]] += 1
        if key[2] == "flaky" and attempts["flaky"] < 3:
            raise errors.TemporaryError("not yet", delay=0.01)
        if key[2] == "broken":
            raise errors.PermanentError("never")
        return None

    async def report(key: reacting.Key, error: errors.PermanentError) -> None:
        reported.append(f"{key[2]}: {error}")

    reactor = reacting.Reactor(handle, on_permanent=report)
    reactor.trigger(("pod", "ns", "flaky"))
    reactor.trigger(("pod", "ns", "broken"))
    await asyncio.sleep(0.3)
    assert attempts == {"flaky": 3, "broken": 1}
    assert reported == ["broken: never"]
    assert reactor.is_idle
    await reactor.close()
