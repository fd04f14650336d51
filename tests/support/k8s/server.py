"""The HTTP face of the Kubernetes API double: an aiohttp application that routes discovery,
collection and item URLs (namespaced and cluster-scoped, ``/status``) to the store, renders
failures as ``kind: Status`` bodies, and applies the faults a test injected.

It owns URL parsing, query parameters, content types and fault injection; object semantics
live in ``store``, patches in ``patching``, selectors in ``selectors``, streams in ``watching``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.support.k8s import errors, patching, registry, selectors, store, watching

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TRUE = ("true", "True", "1")


@dataclasses.dataclass
class Fault:
    """Requests matching ``path`` (exact; None: any) and ``method`` get ``status`` after
    ``delay`` seconds; ``status`` None only delays. ``times`` None: until cleared."""

    path: str | None
    status: int | None = 500
    method: str | None = None
    times: int | None = 1
    delay: float = 0.0
    is_watch: bool | None = None  # None: watches and plain requests alike

    def matches(self, request: web.Request) -> bool:
        if self.path is not None and request.path != self.path:
            return False
        if self.method is not None and request.method != self.method.upper():
            return False
        return self.is_watch is None or self.is_watch == _is_watch(request)


@dataclasses.dataclass
class Target:
    """What a resource URL names; ``name`` None for a collection."""

    resource: registry.Resource
    namespace: str | None
    name: str | None
    is_status: bool


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "") in _TRUE


class Server:
    """The double's state (registry, store, faults, open watches) and its aiohttp app."""

    def __init__(self, resources: registry.Registry, objects: store.Store, *,
                 bookmark_interval: float = 1.0, is_gone_as_status: bool = False) -> None:
        self.registry = resources
        self.store = objects
        self.bookmark_interval = bookmark_interval
        # A watch from a version older than the log keeps: refused with an HTTP 410 Status
        # before any stream (True), or an ERROR event in a 200 stream (False, kube-apiserver's).
        self.is_gone_as_status = is_gone_as_status
        self.faults: list[Fault] = []
        self.watches: list[watching.WatchRequest] = []
        self.requests: list[tuple[str, str]] = []
        self.expired_watches = 0  # the next N watches get 410 Gone

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/version", self._version)
        app.router.add_get("/healthz", self._healthy)
        app.router.add_get("/readyz", self._healthy)
        app.router.add_route("*", "/api", self._dispatch)
        app.router.add_route("*", "/apis", self._dispatch)
        app.router.add_route("*", "/api/{tail:.*}", self._dispatch)
        app.router.add_route("*", "/apis/{tail:.*}", self._dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        fault = next((f for f in self.faults if f.matches(request)), None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                body = errors.status_body(fault.status, "fault injected by the test")
                return web.json_response(body, status=fault.status)
        try:
            return await handler(request)
        except errors.ApiError as error:
            return web.json_response(error.status(), status=error.code)

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-double",
                                  "platform": "linux/amd64"})

    async def _healthy(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    # -- routing --------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        discovery = self._discovery(parts)
        if discovery is not None:
            if request.method != "GET":
                raise errors.ApiError(405, f"{request.method} is not allowed on discovery")
            return web.json_response(discovery)
        target = self._target(parts)
        if target.name is None:
            return await self._collection(request, target)
        if target.is_status and request.method not in ("GET", "PUT", "PATCH"):
            raise errors.ApiError(405, f"{request.method} is not allowed on /status")
        return await self._item(request, target)

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["api"]:
            return self.registry.api_versions()
        if parts == ["api", "v1"]:
            return self.registry.resource_list("", "v1")
        if parts == ["apis"]:
            return self.registry.api_group_list()
        found = None
        if len(parts) == 2 and parts[0] == "apis":
            found = self.registry.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            found = self.registry.resource_list(parts[1], parts[2])
        else:
            return None
        if found is None:
            raise _missing()
        return found

    def _target(self, parts: list[str]) -> Target:
        if parts[0] == "api" and len(parts) > 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _missing()
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = self.registry.lookup(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        resource = self.registry.lookup(group, version, rest[0])
        if resource is None or len(rest) > 3:
            raise _missing()
        name = rest[1] if len(rest) > 1 else None
        is_status = len(rest) == 3
        if is_status and (rest[2] != "status" or not resource.has_status):
            raise _missing()
        if resource.namespaced and namespace is None and name is not None:
            raise _missing()
        return Target(resource, namespace, name, is_status)

    # -- collections ----------------------------------------------------------------------

    def _matcher(self, request: web.Request, resource: registry.Resource,
                 name: str | None = None) -> selectors.Matcher:
        fields = request.query.get("fieldSelector")
        if name is not None:
            fields = ",".join(f for f in (fields, f"metadata.name={name}") if f)
        return selectors.matcher(resource.field_labels, labels=request.query.get("labelSelector"),
                                 fields=fields)

    async def _collection(self, request: web.Request, target: Target) -> web.StreamResponse:
        resource, namespace = target.resource, target.namespace
        if request.method == "GET":
            if _is_watch(request):
                return await self._watch(request, target)
            return self._list(request, target)
        if request.method == "POST":
            if resource.namespaced and namespace is None:
                raise errors.ApiError(405, f"create {resource.plural} needs a namespace")
            created = self.store.create(resource, namespace, await _body(request))
            return web.json_response(created, status=201)
        if request.method == "DELETE":
            options = await _delete_options(request)
            done = self.store.delete_collection(
                resource, namespace, self._matcher(request, resource),
                propagation=options.get("propagationPolicy"),
                grace=options.get("gracePeriodSeconds"))
            return web.json_response(self._list_body(resource, done, self.store.revision))
        raise errors.ApiError(405, f"{request.method} is not allowed on a collection")

    def _list_body(self, resource: registry.Resource, items: list[store.Object],
                   revision: int) -> dict[str, Any]:
        if not resource.is_custom:
            # Typed lists of built-in resources carry no kind/apiVersion per item.
            for item in items:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(revision)}, "items": items}

    def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        matches = self._matcher(request, target.resource)
        items, revision = self.store.list(target.resource, target.namespace, matches)
        token = request.query.get("continue")
        if token:
            try:
                after, revision = json.loads(base64.urlsafe_b64decode(token))
            except ValueError as error:
                raise errors.ApiError(400, "invalid continue token") from error
            items = [i for i in items if _sort_key(i) > tuple(after)]
        body = self._list_body(target.resource, items, revision)
        limit = int(request.query.get("limit") or 0)
        if 0 < limit < len(items):
            body["items"] = items[:limit]
            last = list(_sort_key(items[limit - 1]))
            body["metadata"]["continue"] = base64.urlsafe_b64encode(
                json.dumps([last, revision]).encode()).decode()
            body["metadata"]["remainingItemCount"] = len(items) - limit
        return web.json_response(body)

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        version = request.query.get("resourceVersion") or "0"
        if not version.isdigit():
            raise errors.ApiError(400, f"invalid resourceVersion: {version!r}")
        timeout = request.query.get("timeoutSeconds")
        watch = watching.WatchRequest(
            resource=target.resource, namespace=target.namespace,
            matches=self._matcher(request, target.resource, target.name),
            resource_version=int(version) or None,
            is_bookmarks=request.query.get("allowWatchBookmarks", "") in _TRUE,
            is_initial_events_end=request.query.get("sendInitialEvents", "") in _TRUE,
            timeout=float(timeout) if timeout else None, path=request.path)
        is_forced_gone = self.expired_watches > 0
        self.expired_watches = max(0, self.expired_watches - 1)
        if self.is_gone_as_status:
            if is_forced_gone:
                raise errors.gone("too old resource version (forced by the test)")
            if watch.resource_version is not None:
                self.store.events_after(watch.resource_version)  # 410 when compacted away
        self.watches.append(watch)
        try:
            return await watching.stream(request, watch, self.store,
                                         bookmark_interval=self.bookmark_interval,
                                         is_forced_gone=is_forced_gone)
        finally:
            self.watches.remove(watch)

    # -- items ----------------------------------------------------------------------------

    async def _item(self, request: web.Request, target: Target) -> web.StreamResponse:
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        if request.method == "GET":
            if _is_watch(request):
                return await self._watch(request, target)
            return web.json_response(self.store.get(resource, namespace, name))
        if request.method == "PUT":
            body = await _body(request)
            return web.json_response(self.store.replace(resource, namespace, name, body,
                                                        status=target.is_status))
        if request.method == "PATCH":
            apply = _patcher(request.content_type, resource, await _body(request))
            return web.json_response(self.store.patch(resource, namespace, name, apply,
                                                      status=target.is_status))
        if request.method == "DELETE":
            options = await _delete_options(request)
            return web.json_response(self.store.delete(
                resource, namespace, name, propagation=options.get("propagationPolicy"),
                grace=options.get("gracePeriodSeconds"),
                preconditions=options.get("preconditions")))
        raise errors.ApiError(405, f"{request.method} is not allowed on an object")


def _missing() -> errors.ApiError:
    return errors.ApiError(404, "the server could not find the requested resource")


def _sort_key(item: store.Object) -> tuple[str, str]:
    meta = item["metadata"]
    return (meta.get("namespace", ""), meta["name"])


async def _body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError as error:
        raise errors.ApiError(400, f"the request body is not JSON: {error}") from error


async def _delete_options(request: web.Request) -> dict[str, Any]:
    """DeleteOptions from the body and the query (the query wins, as on the real server)."""
    raw = await request.read()
    options = json.loads(raw) if raw.strip() else {}
    if not isinstance(options, dict):
        raise errors.ApiError(400, "DeleteOptions must be an object")
    if "propagationPolicy" in request.query:
        options["propagationPolicy"] = request.query["propagationPolicy"]
    if "gracePeriodSeconds" in request.query:
        options["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
    return options


def _patcher(content_type: str, resource: registry.Resource,
             body: Any) -> Callable[[store.Object], Any]:
    """The function that applies a PATCH body; 415 for a type this resource does not take."""
    if content_type == patching.MERGE:
        if not isinstance(body, dict):
            raise errors.ApiError(400, "a merge patch must be a JSON object")
        return lambda obj: patching.merge(obj, body)
    if content_type == patching.JSON_PATCH:
        return lambda obj: patching.json_patch(obj, body)
    if content_type == patching.STRATEGIC:
        if resource.is_custom:
            raise errors.ApiError(415, "strategic merge patch is not supported for custom "
                                  f"resources ({resource.qualified})")
        if not isinstance(body, dict):
            raise errors.ApiError(400, "a strategic merge patch must be a JSON object")
        return lambda obj: patching.strategic(obj, body)
    raise errors.ApiError(415, f"the double does not support the media type {content_type!r}")
