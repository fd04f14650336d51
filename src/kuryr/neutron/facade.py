"""How the Neutron facade calls the SDK: the plumbing every part of ``client.Neutron`` shares.

Owns the connection handed in, one bounded thread pool in which every blocking SDK call runs,
failure mapping (``failures.translate``) with one repetition of a read or delete whose
connection failed, the observer of each call, and the tags put on what is created. It has no
resource methods: ``client`` (networks, subnets, routers, ports, trunks, tags),
``security_groups``, ``address_groups``, ``floating_ips`` and ``quotas`` add them on this base.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import openstack.connection

from kuryr import calling
from kuryr.neutron import failures, operations, tagging

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")


class Facade:
    """The shared base of ``client.Neutron``: a connection, its thread pool and ``_call``."""

    def __init__(self, conn: openstack.connection.Connection, *, cluster_id: str,
                 max_workers: int = 8, observer: operations.Observer | None = None,
                 vif_cache_ttl: float = 0.0) -> None:
        self._conn = conn
        # ``vif_for_port``'s networks and subnets, reused for ``vif_cache_ttl`` seconds.
        self.vif_cache_ttl = vif_cache_ttl
        self._vif_parts: dict[str, tuple[float, Any]] = {}
        self._observer = observer
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="neutron")
        self.cluster_id = cluster_id
        self.base_tags = (tagging.KURYR, tagging.cluster(cluster_id))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._conn.close()

    @property
    def _net(self) -> Any:
        """The SDK's network proxy, resolved where it is used: in the pool's threads. Its
        first resolution discovers the endpoint (HTTP, up to the SDK's timeout, failing while
        Neutron is down), which must never run on the event loop."""
        return calling.Deferred(self._conn, "network")

    async def _call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await calling.call(self._pool, fn, *args, what=what,
                                  operation=operations.operation(what),
                                  translate=failures.translate,
                                  is_repeatable=failures.is_repeatable,
                                  observer=self._observer, **kwargs)

    def _tags(self, extra: Iterable[str]) -> list[str]:
        return [*self.base_tags, *[t for t in extra if t not in self.base_tags]]

    async def _create_tagged(self, what: str, create: Callable[..., Any],
                             delete: Callable[..., Any], tags: Iterable[str],
                             **attrs: Any) -> Any:
        """Create a resource, then tag it: Neutron accepts ``tags`` in the POST of ports only.
        If tagging fails the resource is deleted again, so nothing untagged is left."""
        all_tags = self._tags(tags)
        proxy = self._net

        def create_and_tag() -> Any:
            made = create(**attrs)
            try:
                return proxy.set_tags(made, all_tags)
            except Exception:
                delete(made, ignore_missing=True)
                raise

        return await self._call(what, create_and_tag)

    async def _list(self, what: str, fn: Callable[..., Iterable[Any]],
                    convert: Callable[[Any], _T], *, tags: Sequence[str],
                    **query: Any) -> list[_T]:
        if tags:
            query["tags"] = list(tags)
        found = await self._call(what, lambda: list(fn(**query)))
        return [convert(r) for r in found]
