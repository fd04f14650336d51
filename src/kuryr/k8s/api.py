"""The Kubernetes API client: requests over kubernetes_asyncio's ApiClient (its
configuration, authentication and TLS), objects as plain JSON dicts.

Owns connecting (an API URL, a kubeconfig or the in-cluster service account) and the mapping
of API failures into kuryr's error family (``translate``). It does not decide what to write.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from kuryr import errors, settings
from kuryr.k8s import resources

LOG = logging.getLogger(__name__)
Object = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class GoneError(errors.TemporaryError):
    """410 Gone: the resourceVersion asked for is older than the server keeps (compacted
    away), whether the watch request was refused with it or its stream sent it as an ERROR
    event. Asking again with the same version fails the same way: list afresh."""


def translate(status: int, message: str) -> errors.KuryrError:
    """The kuryr error for an API failure: 404 NotFoundError, 410 GoneError, 409 (conflict,
    stale resourceVersion), 429 and 5xx TemporaryError, other 4xx PermanentError."""
    if status == 404:
        return errors.NotFoundError(message)
    if status == 410:
        return GoneError(message)
    if status in (409, 429) or status >= 500 or status == 0:
        return errors.TemporaryError(message, delay=0.2 if status == 409 else 1.0)
    return errors.PermanentError(message)


async def connect(config: settings.KubernetesSettings) -> Kube:
    """A client for ``[kubernetes]``: ``api_root``, else ``kubeconfig``, else in-cluster.
    Raises ConfigError."""
    configuration = k8s_client.Configuration()
    try:
        if config.api_root:
            configuration.host = config.api_root
        elif config.kubeconfig:
            await k8s_config.load_kube_config(config_file=config.kubeconfig,
                                              client_configuration=configuration)
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
    except (k8s_config.ConfigException, OSError) as e:
        where = "" if config.api_root or config.kubeconfig else (
            " (not in a pod: set [kubernetes] kubeconfig or api_root, or --kubeconfig)")
        raise errors.ConfigError(f"cannot set up the Kubernetes client: {e}{where}") from e
    return Kube(k8s_client.ApiClient(configuration))


class Kube:
    """Kubernetes for kuryr: every method is async and raises kuryr errors only
    (NotFoundError, TemporaryError, PermanentError)."""

    def __init__(self, api_client: k8s_client.ApiClient) -> None:
        self._api = api_client

    async def close(self) -> None:
        await self._api.close()

    async def _open(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                    body: Any = None, content_type: str = "application/json",
                    timeout: float | None = 30.0) -> aiohttp.ClientResponse:
        try:
            response: aiohttp.ClientResponse = await self._api.call_api(
                path, method, query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, k8s_client.ApiException) as e:
            raise errors.TemporaryError(f"{method} {path}: {e}", delay=1.0) from e
        if response.status >= 300:
            text = await response.text()
            response.release()
            try:
                message = str(json.loads(text).get("message", text))
            except ValueError:
                message = text
            raise translate(response.status, f"{method} {path}: {response.status} {message}")
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Object:
        response = await self._open(method, path, **kwargs)
        try:
            data: Object = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError, TimeoutError) as e:
            raise errors.TemporaryError(f"{method} {path}: bad answer: {e}") from e
        finally:
            response.release()
        return data

    # -- objects --------------------------------------------------------------------------------
    async def get(self, resource: resources.Resource, namespace: str | None,
                  name: str) -> Object:
        return await self._json("GET", resource.path(namespace, name))

    async def list(self, resource: resources.Resource, namespace: str | None = None, *,
                   label_selector: str | None = None) -> tuple[list[Object], str]:
        """Every object (paged), and the list's resourceVersion."""
        items: list[Object] = []
        query = {"limit": "500"}
        if label_selector:
            query["labelSelector"] = label_selector
        while True:
            page = await self._json("GET", resource.path(namespace), query=query)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            query["continue"] = meta["continue"]

    async def create(self, resource: resources.Resource, namespace: str | None,
                     body: Object) -> Object:
        body = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        return await self._json("POST", resource.path(namespace), body=body)

    async def patch(self, resource: resources.Resource, namespace: str | None, name: str,
                    patch: Object, *, status: bool = False) -> Object:
        """A merge patch (of ``/status`` when ``status``); put ``metadata.resourceVersion``
        in ``patch`` to make it conditional (stale: TemporaryError)."""
        return await self._json("PATCH", resource.path(namespace, name,
                                                       "status" if status else None),
                                body=patch, content_type=MERGE_PATCH)

    async def replace(self, resource: resources.Resource, namespace: str | None, name: str,
                      body: Object) -> Object:
        """A PUT of the whole object, conditional on ``metadata.resourceVersion`` in ``body``
        (stale: TemporaryError)."""
        body = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        return await self._json("PUT", resource.path(namespace, name), body=body)

    async def delete(self, resource: resources.Resource, namespace: str | None,
                     name: str) -> None:
        """Idempotent: an object already gone is success."""
        with contextlib.suppress(errors.NotFoundError):
            await self._json("DELETE", resource.path(namespace, name))

    async def set_finalizer(self, resource: resources.Resource, obj: Object, finalizer: str,
                            *, present: bool) -> Object:
        """Add (``present``) or remove ``finalizer`` on ``obj``, conditional on its
        resourceVersion (a stale ``obj``: TemporaryError). A no-op returns ``obj``."""
        meta = obj.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        if (finalizer in current) == present:
            return obj
        wanted = [*current, finalizer] if present else [f for f in current if f != finalizer]
        patch = {"metadata": {"finalizers": wanted or None,
                              "resourceVersion": meta.get("resourceVersion")}}
        try:
            return await self.patch(resource, meta.get("namespace"), str(meta.get("name")),
                                    patch)
        except errors.NotFoundError:
            if present:
                raise
            return obj

    async def watch(self, resource: resources.Resource, resource_version: str, *,
                    timeout: int = 300,
                    label_selector: str | None = None) -> AsyncIterator[Object]:
        """The events of one watch request from ``resource_version`` (with bookmarks), until
        the server ends it. An ERROR event is yielded as it came (410 Gone among them); a
        request the server refuses raises as any other (410: GoneError)."""
        query = {"watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout)}
        if label_selector:
            query["labelSelector"] = label_selector
        response = await self._open("GET", resource.path(), query=query, timeout=timeout + 30)
        try:
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise errors.TemporaryError(f"watch {resource.plural}: {e}") from e
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event: Object = json.loads(line)
                except ValueError as e:
                    raise errors.TemporaryError(f"watch {resource.plural}: bad event: {e}") from e
                yield event
        finally:
            response.release()

    async def post_event(self, involved: Object, *, reason: str, message: str,
                         event_type: str = "Warning", component: str = "kuryr-controller"
                         ) -> None:
        """A Kubernetes Event about ``involved``. Best effort: failures are logged."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Object = {
            "metadata": {"name": f"{meta.get('name', 'kuryr')}.{uuid.uuid4().hex[:10]}",
                         "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion", ""),
                               "kind": involved.get("kind", ""), "name": meta.get("name", ""),
                               "namespace": meta.get("namespace", ""),
                               "uid": meta.get("uid", "")},
            "reason": reason, "message": message[:1000], "type": event_type,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            await self.create(resources.EVENTS, namespace, body)
        except errors.KuryrError as e:
            LOG.warning("cannot post event %s on %s: %s", reason, meta.get("name"), e)
