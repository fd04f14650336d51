"""A listed-and-watched cache of one Kubernetes resource (an informer).

Owns the list+watch loop: list, then watch from the list's resourceVersion, resume after a
watch ends, back off while the API fails. On 410 Gone (the version was compacted away: an
ERROR event in the stream, or the watch request refused with that status) it lists again at
once, replaces its cache, and watches from the new list's version: resuming from the stale
one would fail for ever. Every change updates the cache first and then calls
``on_change(namespace, name)``, so a handler always reads the latest state; a list tells
what it added, changed or found gone, not what it found as it was. It does not decide what a
change means.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kuryr import errors
from kuryr.k8s import api, resources

LOG = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace or "", name)


def key_of(obj: api.Object) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer:
    """The current objects of ``resource`` (all namespaces; only those matching
    ``label_selector``, if given), kept by list+watch."""

    def __init__(self, kube: api.Kube, resource: resources.Resource, *,
                 on_change: Callable[[str, str], None], watch_timeout: int = 300,
                 label_selector: str | None = None) -> None:
        self.resource = resource
        self.label_selector = label_selector
        self.objects: dict[Key, api.Object] = {}
        self.synced = asyncio.Event()
        # The last error, while every list or watch since it has failed; None when healthy.
        self.error: str | None = None
        self._failing_since: float | None = None
        self._kube = kube
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._is_watching = False  # this round's watch request has had an event

    def get(self, namespace: str | None, name: str) -> api.Object | None:
        return self.objects.get((namespace or "", name))

    def in_namespace(self, namespace: str) -> list[api.Object]:
        return [o for (ns, _), o in self.objects.items() if ns == namespace]

    def failing_for(self) -> float:
        """Seconds since the list+watch last worked (0 while it works): how stale the cache
        may be."""
        if self._failing_since is None:
            return 0.0
        return time.monotonic() - self._failing_since

    def _worked(self) -> None:
        if self.error is not None:
            LOG.info("watching %s again", self.resource.plural)
        self.error, self._failing_since = None, None

    async def run(self) -> None:
        """List and watch until cancelled."""
        delay = 0.5
        version = ""
        while True:
            is_listed, self._is_watching = not version, False
            try:
                if is_listed:
                    version = await self._relist()
                version = await self._watch(version)
                delay = 0.5
            except api.GoneError as e:
                version = ""
                if not is_listed or self._is_watching:
                    LOG.info("watching %s: %s; listing again", self.resource.plural, e)
                    continue
                # Gone straight after a list: the server is not keeping up; back off.
                delay = await self._failed(e, delay)
            except errors.KuryrError as e:
                delay = await self._failed(e, delay)

    async def _failed(self, e: errors.KuryrError, delay: float) -> float:
        """Record a failure, wait ``delay``; returns the next delay."""
        self.error = str(e)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        LOG.warning("watching %s: %s; again in %.1f s", self.resource.plural, e, delay)
        await asyncio.sleep(delay)
        return min(delay * 2, 30.0)

    async def _relist(self) -> str:
        """List afresh and replace the cache; on_change for every key added, changed (another
        resourceVersion) or gone. Returns the list's resourceVersion."""
        items, version = await self._kube.list(self.resource,
                                               label_selector=self.label_selector)
        self._worked()
        fresh = {key_of(o): o for o in items}
        before, self.objects = self.objects, fresh
        changed = [key for key, obj in fresh.items()
                   if key not in before or _version_of(before[key]) != _version_of(obj)]
        gone = [key for key in before if key not in fresh]
        self.synced.set()
        for key in [*changed, *gone]:
            self._on_change(*key)
        return version

    async def _watch(self, version: str) -> str:
        """One watch request; returns the version to resume from. Raises GoneError (410:
        list again), TemporaryError, PermanentError."""
        async for event in self._kube.watch(self.resource, version,
                                            timeout=self._watch_timeout,
                                            label_selector=self.label_selector):
            kind = event.get("type")
            obj: dict[str, Any] = event.get("object") or {}
            if kind == "ERROR":
                # A Status: 410 when the version was compacted away, else another failure.
                code = obj.get("code")
                raise api.translate(code if isinstance(code, int) else 0,
                                    f"watch of {self.resource.plural} from version "
                                    f"{version}: {obj.get('message')}")
            self._worked()
            self._is_watching = True
            version = _version_of(obj) or version
            if kind == "BOOKMARK":
                continue
            key = key_of(obj)
            if kind == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self._on_change(*key)
        self._worked()  # the watch ran to its timeout
        return version


def _version_of(obj: api.Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
