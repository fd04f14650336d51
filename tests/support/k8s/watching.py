"""Watch streams of the Kubernetes API double: newline-delimited JSON events over one chunked
HTTP response, as the real server sends them.

It owns what one watcher sees: synthetic ADDED events for the current state when no
resourceVersion is given (or "0"), a resume from the store's event log otherwise, an ERROR event
carrying a 410 ``Status`` when that version is older than the log keeps, selector transitions
(an object that starts matching arrives as ADDED, one that stops matching as DELETED), BOOKMARK
events when asked for, ``timeoutSeconds``, and being closed or aborted by a test. It does not
own the events themselves (``store``) nor routing (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import Any

from aiohttp import web

from tests.support.k8s import errors, registry, selectors, store

CLOSE = "close"  # ask a stream to end cleanly
ABORT = "abort"  # ask a stream to drop its connection without ending the chunked body


@dataclasses.dataclass
class WatchRequest:
    """What one watch asked for."""

    resource: registry.Resource
    namespace: str | None
    matches: selectors.Matcher
    resource_version: int | None  # None: start from the current state with synthetic ADDED
    is_bookmarks: bool = False
    is_initial_events_end: bool = False
    timeout: float | None = None
    path: str = ""
    control: asyncio.Queue[store.Event | str] = dataclasses.field(default_factory=asyncio.Queue)


def translate(watch: WatchRequest, event: store.Event) -> tuple[str, store.Object] | None:
    """The event this watcher sees for a store event, or None when it sees nothing."""
    resource = watch.resource
    if (event.resource.group, event.resource.plural) != (resource.group, resource.plural):
        return None
    if watch.namespace and event.namespace != watch.namespace:
        return None
    is_now = watch.matches(event.object)
    if event.type == "ADDED":
        return ("ADDED", event.object) if is_now else None
    is_before = event.previous is not None and watch.matches(event.previous)
    if event.type == "DELETED":
        return ("DELETED", event.object) if (is_now or is_before) else None
    if is_now and is_before:
        return ("MODIFIED", event.object)
    if is_now:
        return ("ADDED", event.object)
    if is_before:
        return ("DELETED", event.object)
    return None


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return (json.dumps({"type": kind, "object": obj}) + "\n").encode()


def _bookmark(watch: WatchRequest, revision: int, *, is_initial_end: bool = False
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(revision)}
    if is_initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": watch.resource.kind, "apiVersion": watch.resource.api_version,
            "metadata": meta}


async def stream(request: web.Request, watch: WatchRequest, objects: store.Store, *,
                 bookmark_interval: float, is_forced_gone: bool = False) -> web.StreamResponse:
    """Serve one watch until its timeout, a test closing it, or the client leaving."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    unsubscribe = objects.subscribe(watch.control.put_nowait)
    try:
        if is_forced_gone:
            gone = errors.gone("too old resource version (forced by the test)")
            await response.write(_line("ERROR", gone.status()))
            return response
        if watch.resource_version is None:
            items, revision = objects.list(watch.resource, watch.namespace, watch.matches)
            initial = [("ADDED", item) for item in items]
        else:
            try:
                events = objects.events_after(watch.resource_version)
            except errors.ApiError as error:
                await response.write(_line("ERROR", error.status()))
                return response
            initial = [seen for event in events if (seen := translate(watch, event))]
            revision = objects.revision
        for kind, obj in initial:
            await response.write(_line(kind, obj))
        if watch.is_bookmarks and watch.is_initial_events_end:
            await response.write(_line("BOOKMARK",
                                       _bookmark(watch, revision, is_initial_end=True)))
        await _follow(request, response, watch, objects, bookmark_interval)
    except ConnectionResetError:
        pass  # the client went away mid-write
    finally:
        unsubscribe()
    return response


async def _follow(request: web.Request, response: web.StreamResponse, watch: WatchRequest,
                  objects: store.Store, bookmark_interval: float) -> None:
    deadline = None if watch.timeout is None else time.monotonic() + watch.timeout
    next_bookmark = time.monotonic() + bookmark_interval
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if request.transport is None or request.transport.is_closing():
            return  # the client went away
        wake = min(next_bookmark, now + 0.5, deadline if deadline is not None else now + 0.5)
        try:
            async with asyncio.timeout(max(0.0, wake - now)):
                item = await watch.control.get()
        except TimeoutError:
            # The timeout can fire just as an item arrives (it stays queued): a bookmark
            # then would claim events not yet sent, and a client resuming from it loses them.
            if (watch.is_bookmarks and time.monotonic() >= next_bookmark
                    and watch.control.empty()):
                # The queue is empty: everything up to the store's revision has been seen.
                await response.write(_line("BOOKMARK", _bookmark(watch, objects.revision)))
                next_bookmark = time.monotonic() + bookmark_interval
            continue
        if item == ABORT:
            if request.transport is not None:
                request.transport.abort()
            return
        if item == CLOSE:
            return
        assert isinstance(item, store.Event)
        seen = translate(watch, item)
        if seen is not None:
            await response.write(_line(*seen))


def close(watches: list[WatchRequest], *, path: str | None = None, abort: bool = False) -> int:
    """End the open watches (on ``path`` only, if given); returns how many were told."""
    told = 0
    for watch in list(watches):
        if path is None or watch.path == path:
            with contextlib.suppress(asyncio.QueueFull):
                watch.control.put_nowait(ABORT if abort else CLOSE)
            told += 1
    return told
