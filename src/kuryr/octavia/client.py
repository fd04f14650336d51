"""The async facade over openstacksdk's load-balancer proxy: the only code that calls Octavia.

Owns one bounded thread pool in which every blocking SDK call runs, the translation of SDK
resources into ``resources`` dataclasses, failure mapping (``failures.translate``), the tags put
on what it creates (in the create request itself: Octavia takes ``tags`` on load balancers,
listeners, pools and members), bounded waits for a provisioning status, and the batch member
update the SDK has no method for. It does not make the connection (``kuryr.neutron.connecting``
does, with the Neutron credentials) and does not decide what to create: the controller does.

Octavia refuses every change to a load balancer, and to anything on it, while the load
balancer is PENDING_* (409, mapped to ``TemporaryError``): callers wait with
``wait_load_balancer`` after each change, or retry on the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import openstack.connection
from openstack import exceptions as sdk_exceptions

from kuryr import calling, errors
from kuryr.octavia import failures, resources

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

# (operation, result, seconds), as kuryr.neutron's observer: the operation has few distinct
# values (no ids), the result is "ok", "Cancelled" or the kuryr error class name.
Observer = calling.Observer

# Polling a provisioning status: short first (the OVN provider is done in ~0.3-0.7 s), then
# growing to a cap that keeps one waiter at most 2 requests a second.
_FIRST_POLL = 0.05
_MAX_POLL = 0.5
# How long a load balancer that takes changes again is waited for while something on it is
# still PENDING_*: Octavia does not refuse changes for a pending member, and a member the
# provider never reports on must not block every later change.
_CHILDREN_GRACE = 30.0


class Octavia:
    """Octavia for kuryr: every method is async, runs SDK calls in the pool, maps failures
    (TemporaryError, PermanentError, NotFoundError, QuotaExceededError) and tags what it makes
    with ``base_tags`` and the caller's tags."""

    def __init__(self, conn: openstack.connection.Connection, *, base_tags: tuple[str, ...],
                 max_workers: int = 4, observer: Observer | None = None) -> None:
        self._conn = conn
        self._observer = observer
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="octavia")
        self.base_tags = tuple(base_tags)

    def close(self) -> None:
        """Stop the pool and close the connection (hand each facade a connection of its
        own, as ``Neutron`` closes its own too)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._conn.close()

    @property
    def _lb(self) -> Any:
        """The SDK's load-balancer proxy, resolved where it is used: in the pool's threads. Its
        first resolution discovers the endpoint (HTTP, failing while Octavia is down), which
        must never run on the event loop."""
        return calling.Deferred(self._conn, "load_balancer")

    async def _call(self, operation: str, what: str, fn: Callable[..., _T], *args: Any,
                    **kwargs: Any) -> _T:
        """Run ``fn`` in the pool; ``operation`` is what the observer is told ("create
        listener"), ``what`` what errors say ("create listener on load balancer <id>")."""
        return await calling.call(self._pool, fn, *args, what=what, operation=operation,
                                  translate=failures.translate,
                                  is_repeatable=failures.is_repeatable,
                                  observer=self._observer, **kwargs)

    def _tags(self, extra: Iterable[str]) -> list[str]:
        return [*self.base_tags, *[t for t in extra if t not in self.base_tags]]

    # -- providers ------------------------------------------------------------------------------
    async def list_providers(self) -> list[str]:
        """The names of the enabled provider drivers (``ovn``, ``amphora``, ...)."""
        proxy = self._lb
        found = await self._call("list providers", "list providers",
                                 lambda: list(proxy.providers()))
        return [str(p.name) for p in found]

    # -- load balancers -------------------------------------------------------------------------
    async def create_load_balancer(self, name: str, *, vip_subnet_id: str,
                                   vip_address: str | None = None,
                                   project_id: str | None = None, provider: str | None = None,
                                   tags: Iterable[str] = (), description: str = ""
                                   ) -> resources.LoadBalancer:
        """Create a load balancer (PENDING_CREATE: ``wait_load_balancer`` for ACTIVE). Without
        Keystone, Octavia needs ``project_id``. Raises PermanentError for an address outside
        the subnet or already in use."""
        attrs: dict[str, Any] = {"name": name, "vip_subnet_id": vip_subnet_id,
                                 "tags": self._tags(tags), "description": description}
        optional = {"vip_address": vip_address, "project_id": project_id, "provider": provider}
        attrs.update({k: v for k, v in optional.items() if v})
        r = await self._call("create load balancer", f"create load balancer {name}",
                             self._lb.create_load_balancer, **attrs)
        return resources.load_balancer(r)

    async def get_load_balancer(self, lb_id: str) -> resources.LoadBalancer:
        """Raises NotFoundError (also once a deleted load balancer is gone)."""
        r = await self._call("get load balancer", f"get load balancer {lb_id}",
                             self._lb.get_load_balancer, lb_id)
        return resources.load_balancer(r)

    async def list_load_balancers(self, *, tags: Sequence[str] = (), name: str | None = None
                                  ) -> list[resources.LoadBalancer]:
        """Load balancers carrying every tag in ``tags`` (and named ``name``)."""
        query = _tag_query(tags)
        if name is not None:
            query["name"] = name
        proxy = self._lb
        found = await self._call("list load balancers", "list load balancers",
                                 lambda: list(proxy.load_balancers(**query)))
        return [resources.load_balancer(r) for r in found]

    async def delete_load_balancer(self, lb_id: str, *, cascade: bool = True) -> None:
        """Delete a load balancer, with everything on it when ``cascade``. Idempotent: one that
        is gone, or already PENDING_DELETE, is success (``wait_load_balancer_deleted`` waits
        for it to go). Raises TemporaryError while it is PENDING_CREATE or PENDING_UPDATE."""
        proxy = self._lb

        def delete() -> None:
            try:
                proxy.delete_load_balancer(lb_id, ignore_missing=True, cascade=cascade)
            except sdk_exceptions.ConflictException:
                current = proxy.find_load_balancer(lb_id, ignore_missing=True)
                if current is not None and current.provisioning_status != "PENDING_DELETE":
                    raise

        await self._call("delete load balancer", f"delete load balancer {lb_id}", delete)

    async def wait_load_balancer(self, lb_id: str, *, timeout: float
                                 ) -> resources.LoadBalancer:
        """Poll (short intervals first) Octavia's status tree of the load balancer until
        neither it nor any listener, pool or member on it is PENDING_*; returns it, ACTIVE or
        ERROR (the caller decides what ERROR means).

        The tree, not the load balancer alone: the OVN provider applies a batch member update
        as one request per kind of change (create, update, delete) and marks the load balancer
        ACTIVE after the first, while members of the next are still PENDING_*; a change sent
        then would be overwritten by the late status (measured with ovn-octavia-provider 11).
        Only the load balancer counts once it has taken changes for ``_CHILDREN_GRACE`` s.
        Raises TemporaryError naming what is pending when ``timeout`` passes, NotFoundError
        when the load balancer is gone."""
        deadline = time.monotonic() + timeout
        interval = _FIRST_POLL
        proxy = self._lb
        settled_at: float | None = None  # when the load balancer itself was no longer pending

        def status_tree() -> Any:
            response = proxy.get(f"/lbaas/loadbalancers/{lb_id}/status")
            sdk_exceptions.raise_from_response(response)
            return response.json()

        while True:
            tree = await self._call("get load balancer status",
                                    f"get status of load balancer {lb_id}", status_tree)
            status, pending = _pending(tree)
            if not pending or status == "ERROR":  # ERROR: nothing on it will change any more
                return await self.get_load_balancer(lb_id)
            if status.startswith("PENDING_"):
                settled_at = None
            elif settled_at is None:
                settled_at = time.monotonic()
            elif time.monotonic() - settled_at >= _CHILDREN_GRACE:
                LOG.warning("load balancer %s takes changes again, but %s", lb_id, pending[0])
                return await self.get_load_balancer(lb_id)
            if time.monotonic() >= deadline:
                raise errors.TemporaryError(
                    f"{pending[0]} after {timeout:g} s (still pending: {len(pending)}); are "
                    "the Octavia API and its provider driver agent running?", delay=2.0)
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, _MAX_POLL)

    async def wait_load_balancer_deleted(self, lb_id: str, *, timeout: float) -> None:
        """Poll until the load balancer is gone.

        Raises TemporaryError when ``timeout`` passes, or at once when it is not being deleted
        (ACTIVE or ERROR: a delete failed or was never sent; send it again)."""
        deadline = time.monotonic() + timeout
        interval = _FIRST_POLL
        while True:
            try:
                lb = await self.get_load_balancer(lb_id)
            except errors.NotFoundError:
                return
            if lb.provisioning_status != "PENDING_DELETE":
                raise errors.TemporaryError(
                    f"load balancer {lb_id} is {lb.provisioning_status}, not being deleted",
                    delay=1.0)
            if time.monotonic() >= deadline:
                raise errors.TemporaryError(
                    f"load balancer {lb_id} is still {lb.provisioning_status} after "
                    f"{timeout:g} s", delay=2.0)
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, _MAX_POLL)

    # -- listeners ------------------------------------------------------------------------------
    async def create_listener(self, lb_id: str, *, name: str, protocol: str,
                              protocol_port: int, tags: Iterable[str] = (),
                              timeout_client_data: int | None = None,
                              timeout_member_data: int | None = None) -> resources.Listener:
        """Create a listener (``TCP``, ``UDP``, ``SCTP``; the OVN provider answers 501 to the
        rest: PermanentError). Timeouts in milliseconds; None: Octavia's default. Raises
        PermanentError when another listener has the port, TemporaryError while the load
        balancer is PENDING_*."""
        attrs: dict[str, Any] = {"loadbalancer_id": lb_id, "name": name, "protocol": protocol,
                                 "protocol_port": protocol_port, "tags": self._tags(tags)}
        optional = {"timeout_client_data": timeout_client_data,
                    "timeout_member_data": timeout_member_data}
        attrs.update({k: v for k, v in optional.items() if v is not None})
        r = await self._call("create listener",
                             f"create listener {protocol}/{protocol_port} on load balancer "
                             f"{lb_id}", self._lb.create_listener, **attrs)
        return resources.listener(r)

    async def update_listener(self, listener_id: str, *, timeout_client_data: int | None = None,
                              timeout_member_data: int | None = None) -> resources.Listener:
        """Set both timeouts (milliseconds); None puts Octavia's default back."""
        r = await self._call("update listener", f"update listener {listener_id}",
                             self._lb.update_listener, listener_id,
                             timeout_client_data=timeout_client_data,
                             timeout_member_data=timeout_member_data)
        return resources.listener(r)

    async def list_listeners(self, *, loadbalancer_id: str) -> list[resources.Listener]:
        proxy = self._lb
        found = await self._call(
            "list listeners", f"list listeners of load balancer {loadbalancer_id}",
            lambda: list(proxy.listeners(load_balancer_id=loadbalancer_id)))
        return [resources.listener(r) for r in found]

    async def delete_listener(self, listener_id: str) -> None:
        """Idempotent: a listener that does not exist is success."""
        await self._call("delete listener", f"delete listener {listener_id}",
                         self._lb.delete_listener, listener_id, ignore_missing=True)

    # -- pools ----------------------------------------------------------------------------------
    async def create_pool(self, *, listener_id: str, name: str, protocol: str,
                          lb_algorithm: str, session_persistence: dict[str, Any] | None = None,
                          tags: Iterable[str] = ()) -> resources.Pool:
        """Create the listener's default pool. ``session_persistence`` as Octavia's
        (``{"type": "SOURCE_IP"}``). Raises PermanentError for an algorithm the provider does
        not take (OVN: SOURCE_IP_PORT and SOURCE_IP only) or when the listener has a pool."""
        attrs: dict[str, Any] = {"listener_id": listener_id, "name": name, "protocol": protocol,
                                 "lb_algorithm": lb_algorithm, "tags": self._tags(tags)}
        if session_persistence is not None:
            attrs["session_persistence"] = dict(session_persistence)
        r = await self._call("create pool", f"create pool on listener {listener_id}",
                             self._lb.create_pool, **attrs)
        return resources.pool(r)

    async def update_pool(self, pool_id: str, *, session_persistence: dict[str, Any] | None
                          ) -> resources.Pool:
        """Set the pool's session persistence; None removes it. ``admin_state_up`` (kuryr's
        pools are always up) goes along: ovn-octavia-provider 11 fails a pool update without
        it (KeyError, pool in ERROR). Raises PermanentError for a persistence timeout on a
        TCP pool (Octavia takes one on UDP and SCTP pools only)."""
        r = await self._call("update pool", f"update pool {pool_id}", self._lb.update_pool,
                             pool_id, is_admin_state_up=True,
                             session_persistence=(dict(session_persistence)
                                                  if session_persistence else None))
        return resources.pool(r)

    async def list_pools(self, *, loadbalancer_id: str) -> list[resources.Pool]:
        proxy = self._lb
        found = await self._call(
            "list pools", f"list pools of load balancer {loadbalancer_id}",
            lambda: list(proxy.pools(loadbalancer_id=loadbalancer_id)))
        return [resources.pool(r) for r in found]

    async def delete_pool(self, pool_id: str) -> None:
        """Idempotent: a pool that does not exist is success (its members go with it)."""
        await self._call("delete pool", f"delete pool {pool_id}", self._lb.delete_pool,
                         pool_id, ignore_missing=True)

    # -- members --------------------------------------------------------------------------------
    async def list_members(self, pool_id: str) -> list[resources.Member]:
        """Raises NotFoundError when the pool does not exist."""
        proxy = self._lb
        found = await self._call("list members", f"list members of pool {pool_id}",
                                 lambda: list(proxy.members(pool_id)))
        return [resources.member(r) for r in found]

    async def set_members(self, pool_id: str, members: Sequence[resources.MemberSpec]) -> None:
        """Make the pool's members exactly ``members``, in ONE request (Octavia's batch update,
        ``PUT /v2/lbaas/pools/{pool_id}/members``): members are matched by (address,
        protocol_port); new ones are created (tagged), missing ones deleted. Octavia answers
        at once (202) and the load balancer is PENDING_UPDATE until the provider is done (an
        unchanged set changes nothing). Raises TemporaryError while the load balancer is
        PENDING_*, NotFoundError when the pool does not exist."""
        proxy = self._lb
        body = {"members": [m.body(self.base_tags) for m in members]}

        def put() -> None:
            response = proxy.put(f"/lbaas/pools/{pool_id}/members", json=body)
            sdk_exceptions.raise_from_response(response)

        await self._call("set members", f"set {len(members)} members of pool {pool_id}", put)


def _pending(tree: Any) -> tuple[str, list[str]]:
    """The load balancer's provisioning status in a status tree (``GET
    .../loadbalancers/{id}/status``) and what in it is PENDING_*, the load balancer first:
    "load balancer <id> is still PENDING_UPDATE", "member <id> is still PENDING_DELETE"."""
    lb = ((tree or {}).get("statuses") or {}).get("loadbalancer") or {}
    status = str(lb.get("provisioning_status") or "")
    found = [f"load balancer {lb.get('id')} is still {status}"] if status.startswith(
        "PENDING_") else []
    for listener in lb.get("listeners") or ():
        children: list[tuple[str, Any]] = [("listener", listener)]
        for pool in listener.get("pools") or ():
            children.append(("pool", pool))
            children.extend(("member", m) for m in pool.get("members") or ())
        found.extend(f"{kind} {child.get('id')} is still {child.get('provisioning_status')}"
                     for kind, child in children
                     if str(child.get("provisioning_status") or "").startswith("PENDING_"))
    return status, found


def _tag_query(tags: Sequence[str]) -> dict[str, Any]:
    """Octavia's filter for resources carrying every tag: ``tags=a,b``."""
    return {"tags": ",".join(tags)} if tags else {}
