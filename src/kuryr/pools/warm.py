"""The warm pool: per (network, security groups, project) a configurable number of ready ports
of this host, each created in a bulk request, bound to the host, plugged into a namespace the
pool owns (``kuryr-pool``) and ACTIVE. Taking one moves its interface into the container's
namespace and configures it there (``hand_over``), or into this process's own namespace for a
runtime that moves it itself (``hand_over_host_side``, Docker): netlink only. The port's owner
tags are rewritten in the background, and the pool is refilled in the background. Released
container ports go back in the background too (``release``): recycled into the pool when it has
room (unplugged, plugged again into the pool namespace, retagged), else deleted.

State lives in Neutron and OVS. Pool ports carry ``kuryr-pool-host=<host>`` (``<host>:<name>``
for a named pool: the CNI daemon's pool and each Docker driver's are told apart by it) and
``kuryr-pool=<key>`` tags, and the name ``kuryr-pool-<that value>``, by which a batch whose
tagging a crash cut short is found (and deleted) too. A hand-over is recorded on the port's
OVS Interface (external_ids ``kuryr-pool-owner``: the owner's tags) before the taker answers
its runtime, so that a restart which finds the port still pool-tagged (its retag had not
landed) gives it back to its owner; ``rebuild`` also keeps, and never deletes, a pool port
plugged outside the pool namespace (in use by a container, recorded or not). The ports still
plugged in the pool namespace are ready again; the others are released.

Owns the pool's bookkeeping; the holding namespace, the moves out of it and the records of
hand-overs are ``holding``'s; creating, plugging and deleting ports go through
``kuryr.ports.lifecycle`` and the binders.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from kuryr import binding, errors, model
from kuryr.binding import ovs as ovs_binding
from kuryr.linux import interfaces, namespaces
from kuryr.neutron import client, resources, tagging
from kuryr.pools import holding
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

POOL_NETNS = holding.POOL_NETNS
TAG_POOL = "pool"
TAG_POOL_HOST = "pool-host"
OWNER_RECORD = holding.OWNER_RECORD
_RETRY_DELAY = 5.0


@dataclasses.dataclass(frozen=True)
class PoolKey:
    """Which ports are interchangeable: same network, security groups (None: Neutron's default
    group) and project (None: the credentials' project)."""

    network_id: str
    security_group_ids: tuple[str, ...] | None = None
    project_id: str | None = None

    def tag_value(self) -> str:
        groups = "+".join(self.security_group_ids) if self.security_group_ids is not None else "*"
        return f"{self.network_id};{groups};{self.project_id or '*'}"

    @classmethod
    def from_tag_value(cls, value: str) -> PoolKey | None:
        parts = value.split(";")
        if len(parts) != 3:
            return None
        groups = None if parts[1] == "*" else tuple(g for g in parts[1].split("+") if g)
        return cls(network_id=parts[0], security_group_ids=groups,
                   project_id=None if parts[2] == "*" else parts[2])


@dataclasses.dataclass(frozen=True)
class ReadyPort:
    """A pool port plugged into the pool namespace as ``pool_ifname``, ACTIVE."""

    port: resources.Port
    vif: model.VIF
    key: PoolKey

    @property
    def pool_ifname(self) -> str:
        return pool_ifname(self.port.id)


pool_ifname = holding.pool_ifname


class PortPool:
    """Ready ports by key, refilled in the background; ``take`` never calls Neutron.

    ``name`` tells this pool's ports apart from other pools' on the same host: "" for the CNI
    daemon's, ``docker-<driver name>`` for a Docker driver's."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 host: str, size: int, batch: int, active_timeout: float = 30.0,
                 name: str = "") -> None:
        self.neutron = neutron
        self.binders = binders
        self.host = host
        self.size = size
        self.batch = batch
        self.active_timeout = active_timeout
        self.name = name
        self.ready: dict[PoolKey, list[ReadyPort]] = {}
        self._refills: dict[PoolKey, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._retags: dict[str, asyncio.Task[None]] = {}
        self._recycles: dict[PoolKey, set[asyncio.Task[None]]] = {}
        self._recycling: dict[PoolKey, int] = {}
        self._coming: dict[PoolKey, int] = {}
        self._releases: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._draining: set[PoolKey] = set()
        self._netns = ""

    @property
    def host_tag(self) -> str:
        """The tag every port of this pool carries: this host, and the pool's name if any."""
        return tagging.owner(TAG_POOL_HOST, f"{self.host}:{self.name}" if self.name else self.host)

    @property
    def port_name(self) -> str:
        """The name of this pool's ports: a batch whose tags a crash kept from being written
        (Neutron takes them in calls of their own) is still found by it."""
        return f"kuryr-pool-{self.host}:{self.name}" if self.name else f"kuryr-pool-{self.host}"

    def _pool_tags(self, key: PoolKey) -> list[str]:
        return [self.host_tag, tagging.owner(TAG_POOL, key.tag_value())]

    async def start(self, keys: Sequence[PoolKey] = ()) -> None:
        """Create the pool namespace, find the pool's ports again (``rebuild``) and fill the
        pools of ``keys``."""
        self._netns = await asyncio.to_thread(namespaces.create, POOL_NETNS)
        await self.rebuild()
        for key in keys:
            self.wake(key)

    async def close(self, *, timeout: float = 10.0) -> None:
        """Let background releases finish (at most ``timeout`` seconds; the rest are found
        again at the next start), then stop background work; ready ports stay (found again
        by ``rebuild``)."""
        releases = [task for _, task in self._releases.values()]
        if releases:
            _, pending = await asyncio.wait(releases, timeout=timeout)
            if pending:
                LOG.warning("pool: %d background release(s) cancelled at shutdown; they are "
                            "finished at the next start", len(pending))
        tasks = [*self._refills.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the owner tags of every taken port are written."""
        while self._retags:
            await asyncio.gather(*list(self._retags.values()), return_exceptions=True)

    def count(self, key: PoolKey) -> int:
        return len(self.ready.get(key, ()))

    # -- taking and giving back -----------------------------------------------------------------
    def take(self, key: PoolKey, owner_tags: Sequence[str] | None = None) -> ReadyPort | None:
        """A ready port for ``key`` (or None); schedules a refill.

        With ``owner_tags`` the port is that owner's from now on: the hand-over is recorded on
        its OVS Interface before this returns (one local OVSDB transaction, done here although
        it blocks for a few milliseconds, because the record must be durable before the caller
        answers its runtime), and its Neutron tags are rewritten in the background; a port
        whose hand-over cannot be recorded stays in the pool and None is returned. Without
        ``owner_tags`` the port is only set aside: ``assign`` names its owner later, or
        ``give_back`` returns it."""
        ready = self.ready.get(key)
        if not ready:
            self.wake(key)
            return None
        taken = ready.pop(0)
        if owner_tags is not None:
            try:
                self._record(taken.port.id, owner_tags)
            except errors.BindingError as e:
                LOG.warning("pool: cannot record the hand-over of port %s (%s); not taken",
                            taken.port.id, e)
                ready.insert(0, taken)
                return None
            # Not named as a pool port any more (the same two requests as a retag alone).
            self._retag_later(taken.port.id, list(owner_tags), {"name": ""})
        self.wake(key)  # after the pop: a full pool needs a refill now
        return taken

    def take_port(self, port_id: str) -> ReadyPort | None:
        """The ready port ``port_id``, set aside as ``take`` without owner tags does; None if
        it is not ready in this pool."""
        for key, ready in self.ready.items():
            for i, candidate in enumerate(ready):
                if candidate.port.id == port_id:
                    del ready[i]
                    self.wake(key)
                    return candidate
        return None

    async def assign(self, taken: ReadyPort, owner_tags: Sequence[str], **changes: Any) -> None:
        """Make a port set aside by ``take`` the owner's: the hand-over is recorded on its OVS
        Interface now; its Neutron tags (and ``changes``: ``name``, ``device_id``, ...) are
        rewritten in the background. Raises BindingError (nothing recorded: the port is still
        set aside)."""
        await asyncio.to_thread(self._record, taken.port.id, owner_tags)
        self._retag_later(taken.port.id, list(owner_tags), changes)

    def give_back(self, taken: ReadyPort) -> None:
        """Return a port set aside by ``take`` that was never handed over (its interface is
        still in the pool namespace): ready again, or deleted in the background when its pool
        is full or going away."""
        if taken.key in self._draining or taken.key not in self.ready or \
                self._room(taken.key) <= 0:
            self._spawn(self._forget(taken.port.id))  # refilled meanwhile: one too many
            return
        self.ready[taken.key].insert(0, taken)

    def hand_over(self, taken: ReadyPort, *, netns: str, ifname: str,
                  owner_tags: Sequence[str] | None = None) -> None:
        """Move a taken port's interface into ``netns`` as ``ifname`` and configure it there,
        first recording ``owner_tags`` as its owner on its OVS Interface (blocking: run it in
        a thread, off the event loop; then ``handed_over``). Raises NamespaceNotFoundError,
        BindingError (nothing moved if the record could not be written)."""
        if owner_tags is not None:
            self._record(taken.port.id, owner_tags)
        holding.hand_over(taken.vif, pool_netns=self._netns, netns=netns, ifname=ifname)

    def handed_over(self, taken: ReadyPort, owner_tags: Sequence[str]) -> None:
        """After ``hand_over`` with ``owner_tags``: the port's Neutron tags (and name) become
        the owner's, in the background."""
        self._retag_later(taken.port.id, list(owner_tags), {"name": ""})

    def hand_over_host_side(self, port_id: str, *, peer_ifname: str) -> None:
        """Move a taken port's interface out of the pool namespace into this process's own as
        ``peer_ifname`` (``holding.hand_over_host_side``; blocking, run in a thread). Raises
        BindingError, PermanentError."""
        holding.hand_over_host_side(port_id, pool_netns=self._netns, peer_ifname=peer_ifname)

    def is_waiting(self, port_id: str) -> bool:
        """Whether ``port_id``'s interface is in the pool namespace, not handed over yet (a
        port taken before a restart, say). Blocking."""
        return interfaces.link_exists(pool_ifname(port_id), netns=self._netns)

    async def ready_port(self, port: resources.Port, key: PoolKey) -> ReadyPort:
        """A ``ReadyPort`` for a port taken from the pool before a restart (``is_waiting``).
        Raises TemporaryError, NotFoundError."""
        return ReadyPort(port=port, vif=await self.neutron.vif_for_port(port), key=key)

    async def plugged_port_ids(self) -> set[str] | None:
        """The Neutron ports with an OVS interface on this host; None when it cannot be told
        (no OVS binder). Raises BindingError."""
        binder = self._ovs()
        if binder is None:
            return None
        return await asyncio.to_thread(binder.plugged_port_ids)

    # -- releasing --------------------------------------------------------------------------------
    def release(self, port_id: str, *, network_id: str, recycle_into: PoolKey | None,
                prepare: Callable[[], Awaitable[None]] | None = None) -> None:
        """Release a container's port in the background: after ``prepare`` (the caller's own
        Neutron work on it), back into the pool of ``recycle_into`` if that has room
        (``recycle``), else deleted. The caller unplugs it first: a container port without an
        OVS interface is the durable record that its release is under way, which a restart
        finds again. One release per port at a time; a failure is logged and the port, still
        unplugged, is released at the next start."""
        if port_id in self._releases:
            return
        task = self._new_task(self._release(port_id, recycle_into, prepare))
        self._releases[port_id] = (network_id, task)
        task.add_done_callback(lambda _: self._releases.pop(port_id, None))

    def is_releasing(self, port_id: str) -> bool:
        return port_id in self._releases

    async def wait_released(self, network_id: str) -> None:
        """Wait until the background releases of ports of ``network_id`` are done."""
        tasks = [task for net, task in self._releases.values() if net == network_id]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _release(self, port_id: str, key: PoolKey | None,
                       prepare: Callable[[], Awaitable[None]] | None) -> None:
        try:
            retag = self._retags.get(port_id)
            if retag is not None:  # a pending retag must not land after the recycle's
                await asyncio.gather(retag, return_exceptions=True)
            if prepare is not None:
                try:
                    await prepare()
                except errors.KuryrError as e:
                    LOG.warning("releasing port %s: %s; deleting it rather than recycling it",
                                port_id, e)
                    key = None
            if key is not None and await self.recycle(port_id, key):
                return
            await lifecycle.detach(self.neutron, self.binders, port_id=port_id)
        except errors.KuryrError as e:
            LOG.warning("background release of port %s failed: %s; it stays unplugged and is "
                        "released at the next start", port_id, e)
        except Exception:  # a bug must not kill the loop's other work
            LOG.exception("background release of port %s failed", port_id)

    async def recycle(self, port_id: str, key: PoolKey) -> bool:
        """Take a released container port back into the pool of ``key`` if it has room: it is
        unplugged now and plugged into the pool namespace again in the background. False: the
        caller deletes it. Raises BindingError, TemporaryError (unplugging, retagging)."""
        if key not in self.ready or key in self._draining or self._room(key) <= 0:
            return False
        # The place is taken before the first await: releases running side by side must not
        # all see the same room.
        self._recycling[key] = self._recycling.get(key, 0) + 1
        try:
            await lifecycle.detach(self.neutron, self.binders, port_id=port_id,
                                   delete_port=False)
            # The container's tags go now: after DEL no port may name the container any more.
            port = await self.neutron.update_port(port_id, tags=self._pool_tags(key),
                                                  name=self.port_name, device_id="")
        except BaseException:
            self._recycling[key] -= 1
            raise
        task = self._spawn(self._recycle(port, key))
        recycles = self._recycles.setdefault(key, set())
        recycles.add(task)
        task.add_done_callback(recycles.discard)
        return True

    def _room(self, key: PoolKey) -> int:
        """How many ports ``key`` lacks, counting those on their way into it: being recycled,
        or made by a refill."""
        return (self.size - self.count(key) - self._recycling.get(key, 0)
                - self._coming.get(key, 0))

    async def drain(self, key: PoolKey) -> None:
        """Stop filling ``key`` and delete its ready ports (its network is about to go). A
        refill or a recycling under way is waited for, so that no port of it is left; ports
        taken from it are their owners'. Raises TemporaryError (listing leftovers)."""
        self._draining.add(key)
        try:
            refill = self._refills.pop(key, None)
            pending = [*([refill] if refill is not None else []),
                       *self._recycles.get(key, ())]
            await asyncio.gather(*pending, return_exceptions=True)
            ready = self.ready.pop(key, [])
            await asyncio.gather(*(self._forget(r.port.id) for r in ready))
            # A batch of an earlier run that Neutron made after its rebuild looked.
            await self._forget_untagged(network_id=key.network_id)
        finally:
            self._draining.discard(key)
        LOG.info("pool %s: drained", key.tag_value())

    # -- filling --------------------------------------------------------------------------------
    def wake(self, key: PoolKey) -> None:
        """Make sure a refill of ``key`` runs if it is below its size."""
        if key in self._draining:
            return
        self.ready.setdefault(key, [])
        task = self._refills.get(key)
        if (task is None or task.done()) and self._room(key) > 0:
            self._refills[key] = self._new_task(self._refill(key))

    async def _refill(self, key: PoolKey) -> None:
        while self._room(key) > 0 and key not in self._draining:
            wanted = min(self.batch, self._room(key))
            try:
                await self._add_ports(key, wanted)
            except errors.NotFoundError as e:
                LOG.info("pool %s: its network is gone (%s); not refilled", key.tag_value(), e)
                if not self.ready.get(key):
                    self.ready.pop(key, None)
                return
            except errors.KuryrError as e:
                LOG.warning("pool %s: cannot add %d port(s): %s; retrying in %g s",
                            key.tag_value(), wanted, e, _RETRY_DELAY)
                for _ in range(int(_RETRY_DELAY * 10)):
                    if key in self._draining:
                        return
                    await asyncio.sleep(0.1)

    async def _add_ports(self, key: PoolKey, count: int) -> None:
        self._coming[key] = self._coming.get(key, 0) + count
        try:
            ports = await self.neutron.create_ports(
                key.network_id, count, tags=self._pool_tags(key), host_id=self.host,
                device_owner=lifecycle.DEVICE_OWNER, security_group_ids=key.security_group_ids,
                project_id=key.project_id, name=self.port_name)
            made = await asyncio.gather(*(self._make_ready(p, key) for p in ports),
                                        return_exceptions=True)
        finally:
            self._coming[key] -= count
        for result in made:
            if isinstance(result, ReadyPort):
                await self._add_ready(result)
            elif isinstance(result, BaseException):
                LOG.warning("pool %s: a port failed to become ready: %s", key.tag_value(), result)

    async def _add_ready(self, ready: ReadyPort) -> None:
        if ready.key in self._draining or ready.key not in self.ready:
            await self._forget(ready.port.id)  # its pool went away meanwhile
        else:
            self.ready[ready.key].append(ready)

    async def _make_ready(self, port: resources.Port, key: PoolKey) -> ReadyPort:
        """Plug ``port`` into the pool namespace and wait for ACTIVE; on failure it is deleted
        (Raises what plugging raised)."""
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self._forget, port.id)
            attachment = await lifecycle.plug_existing(
                self.neutron, self.binders, port_id=port.id, netns=self._netns,
                ifname=pool_ifname(port.id), host=self.host, active_timeout=self.active_timeout)
            undo.pop_all()
        return ReadyPort(port=attachment.port, vif=attachment.vif, key=key)

    async def _forget(self, port_id: str) -> None:
        try:
            await lifecycle.detach(self.neutron, self.binders, port_id=port_id)
        except errors.KuryrError as e:
            LOG.error("pool: cannot delete port %s: %s", port_id, e)

    async def discard(self, taken: ReadyPort) -> None:
        """Unplug and delete a port set aside by ``take`` that its taker cannot use."""
        await self._forget(taken.port.id)

    def _retag_later(self, port_id: str, owner_tags: list[str],
                     changes: Mapping[str, Any]) -> None:
        task = self._spawn(self._retag(port_id, owner_tags, changes))
        self._retags[port_id] = task
        task.add_done_callback(
            lambda done: self._retags.pop(port_id) if self._retags.get(port_id) is done else None)

    async def _retag(self, port_id: str, owner_tags: list[str],
                     changes: Mapping[str, Any]) -> None:
        try:
            await self.neutron.update_port(port_id, tags=owner_tags, **changes)
        except errors.KuryrError as e:
            LOG.error("pool: cannot retag port %s for its container: %s", port_id, e)

    async def _recycle(self, port: resources.Port, key: PoolKey) -> None:
        try:
            made = await self._make_ready(port, key)
        except errors.KuryrError as e:
            LOG.warning("pool: recycling port %s failed (%s); deleted it", port.id, e)
            await self._forget(port.id)
        else:
            await self._add_ready(made)
        finally:
            self._recycling[key] -= 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._new_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Background work belongs to no request: it must not inherit the context (log or
        # metric labels) of the request that happened to start it.
        return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())

    # -- records of hand-overs (OVS external_ids) -------------------------------------------------
    def _ovs(self) -> ovs_binding.OvsBinder | None:
        """The OVS binder: the pool plugs its ports with it, and its Interfaces' external_ids
        hold the records of hand-overs."""
        binder = self.binders.get("ovs")
        return binder if isinstance(binder, ovs_binding.OvsBinder) else None

    def _record(self, port_id: str, owner_tags: Sequence[str]) -> None:
        binder = self._ovs()
        if binder is not None:
            holding.record(binder, port_id, owner_tags)

    async def _records(self) -> dict[str, list[str]] | None:
        """Port ID -> the owner tags recorded at its hand-over; None when OVS cannot be read."""
        binder = self._ovs()
        if binder is None:
            return {}
        try:
            return await asyncio.to_thread(holding.records, binder)
        except errors.BindingError as e:
            LOG.warning("pool: cannot read the records of hand-overs: %s", e)
            return None

    # -- after a restart ------------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Find this pool's ports in Neutron. A port whose OVS Interface records a hand-over
        belongs to that owner (its retag had not landed before a restart): it is retagged for
        it. A port plugged outside the pool namespace without a record is a container's too:
        it is kept, never reused or deleted. Ports plugged in the pool namespace and ACTIVE are
        ready again; the others are released. When OVS cannot be read, no port is reused or
        released. Returns how many are ready."""
        # Only this cluster's ports: another cluster's pool on the same host is not ours.
        ports = await self.neutron.list_ports(
            tags=[*self.neutron.base_tags, self.host_tag], device_owner=lifecycle.DEVICE_OWNER)
        records = await self._records()
        found = 0
        for port in ports:
            if records is None:
                continue  # cannot tell a container's port from a free one: touch nothing
            owner = records.get(port.id)
            if owner:
                await self._give_to_owner(port.id, owner)
                continue
            in_pool, elsewhere = await asyncio.to_thread(holding.whereabouts, port.id,
                                                         pool_netns=self._netns)
            if elsewhere:
                LOG.warning("pool: port %s is plugged outside %s with no record of whom it was "
                            "handed to: in use by a container; kept, not reused", port.id,
                            POOL_NETNS)
                continue
            raw_key = tagging.value_of(port.tags, TAG_POOL)
            key = PoolKey.from_tag_value(raw_key) if raw_key else None
            if key is None or not in_pool or port.status != "ACTIVE":
                await self._forget(port.id)
                continue
            vif = await self.neutron.vif_for_port(port)
            self.ready.setdefault(key, []).append(ReadyPort(port=port, vif=vif, key=key))
            found += 1
        await self._forget_untagged()
        LOG.info("pool: %d ready port(s) found again", found)
        return found

    async def _forget_untagged(self, **query: str) -> None:
        """Delete this pool's ports that carry no tag at all: made by a bulk request whose
        tagging a crash cut short, so never plugged nor handed to anyone."""
        named = await self.neutron.list_ports(name=self.port_name,
                                              device_owner=lifecycle.DEVICE_OWNER,
                                              **{"binding:host_id": self.host, **query})
        for port in named:
            if not port.tags:
                LOG.info("pool: deleting port %s, made for the pool but never tagged", port.id)
                await self._forget(port.id)

    async def _give_to_owner(self, port_id: str, owner_tags: list[str]) -> None:
        try:
            await self.neutron.update_port(port_id, tags=owner_tags)
        except errors.KuryrError as e:
            LOG.error("pool: cannot give port %s back to its owner (%s): %s; it stays out of the "
                      "pool and is tried again at the next start", port_id,
                      ", ".join(owner_tags), e)
            return
        LOG.info("pool: port %s was handed over (%s) before a restart: its owner tags are "
                 "written now", port_id, ", ".join(owner_tags))
