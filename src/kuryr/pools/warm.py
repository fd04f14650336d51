"""The warm pool: per (network, security groups, project) a configurable number of ready ports
of this host, each created in a bulk request, bound to the host, plugged into a namespace the
pool owns (``kuryr-pool``) and ACTIVE. Taking one moves its interface into the container's
namespace and configures it there: netlink only. The port's owner tags are rewritten in the
background, and the pool is refilled in the background.

State lives in Neutron: pool ports carry ``kuryr-pool-host=<host>`` and ``kuryr-pool=<key>``
tags; after a restart ``rebuild`` finds them again, keeps those still plugged in the pool
namespace and releases the others. Released container ports are recycled into the pool when it
has room (unplugged, plugged again into the pool namespace, retagged), else deleted.

Owns the pool's bookkeeping and the move of an interface out of it; creating, plugging and
deleting ports go through ``kuryr.ports.lifecycle`` and the binders.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from kuryr import binding, errors, model
from kuryr.linux import interfaces, namespaces
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

POOL_NETNS = "kuryr-pool"
TAG_POOL = "pool"
TAG_POOL_HOST = "pool-host"
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


def pool_ifname(port_id: str) -> str:
    return ("p" + port_id)[: interfaces.IFNAMSIZ - 1]


class PortPool:
    """Ready ports by key, refilled in the background; ``take`` never calls Neutron."""

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 host: str, size: int, batch: int, active_timeout: float = 30.0) -> None:
        self.neutron = neutron
        self.binders = binders
        self.host = host
        self.size = size
        self.batch = batch
        self.active_timeout = active_timeout
        self.ready: dict[PoolKey, list[ReadyPort]] = {}
        self._refills: dict[PoolKey, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._retags: set[asyncio.Task[None]] = set()
        self._netns = ""
        self._recycling = 0

    def _pool_tags(self, key: PoolKey) -> list[str]:
        return [tagging.owner(TAG_POOL_HOST, self.host), tagging.owner(TAG_POOL, key.tag_value())]

    async def start(self, keys: Sequence[PoolKey] = ()) -> None:
        """Create the pool namespace, find the pool's ports again (``rebuild``) and fill the
        pools of ``keys``."""
        self._netns = await asyncio.to_thread(namespaces.create, POOL_NETNS)
        await self.rebuild()
        for key in keys:
            self.wake(key)

    async def close(self) -> None:
        """Stop background work; ready ports stay (found again by ``rebuild``)."""
        tasks = [*self._refills.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until the owner tags of every taken port are written."""
        while self._retags:
            await asyncio.gather(*list(self._retags), return_exceptions=True)

    def count(self, key: PoolKey) -> int:
        return len(self.ready.get(key, ()))

    # -- taking and giving back -----------------------------------------------------------------
    def take(self, key: PoolKey, owner_tags: Sequence[str]) -> ReadyPort | None:
        """A ready port for ``key`` (or None), now owned by ``owner_tags`` (written to Neutron
        in the background). Schedules a refill."""
        ready = self.ready.get(key)
        self.wake(key)
        if not ready:
            return None
        taken = ready.pop(0)
        retag = self._spawn(self._retag(taken.port.id, list(owner_tags)))
        self._retags.add(retag)
        retag.add_done_callback(self._retags.discard)
        return taken

    def hand_over(self, taken: ReadyPort, *, netns: str, ifname: str) -> None:
        """Move a taken port's interface into ``netns`` as ``ifname`` and configure it there
        (blocking; run in a thread). Raises NamespaceNotFoundError, BindingError."""
        interfaces.check_ifname(ifname)
        vif = taken.vif
        interfaces.move_to_netns(taken.pool_ifname, netns, new_ifname=ifname,
                                 source_netns=self._netns)
        interfaces.configure(ifname, netns=namespaces.resolve(netns), mtu=vif.mtu,
                             addresses=[f.address for f in vif.fixed_ips],
                             gateways=vif.gateways(), routes=vif.routes())

    async def recycle(self, port_id: str, key: PoolKey) -> bool:
        """Take a released container port back into the pool of ``key`` if it has room: it is
        unplugged now and plugged into the pool namespace again in the background. False: the
        caller deletes it. Raises BindingError, TemporaryError (unplugging, retagging)."""
        if key not in self.ready or self.count(key) + self._recycling >= self.size:
            return False
        await lifecycle.detach(self.neutron, self.binders, port_id=port_id, delete_port=False)
        # The container's tags go now: after DEL no port may name the container any more.
        port = await self.neutron.update_port(port_id, tags=self._pool_tags(key), name="")
        self._recycling += 1
        self._spawn(self._recycle(port, key))
        return True

    # -- filling --------------------------------------------------------------------------------
    def wake(self, key: PoolKey) -> None:
        """Make sure a refill of ``key`` runs if it is below its size."""
        self.ready.setdefault(key, [])
        task = self._refills.get(key)
        if (task is None or task.done()) and self.count(key) < self.size:
            self._refills[key] = asyncio.get_running_loop().create_task(self._refill(key))

    async def _refill(self, key: PoolKey) -> None:
        while self.count(key) < self.size:
            wanted = min(self.batch, self.size - self.count(key))
            try:
                await self._add_ports(key, wanted)
            except errors.KuryrError as e:
                LOG.warning("pool %s: cannot add %d port(s): %s; retrying in %g s",
                            key.tag_value(), wanted, e, _RETRY_DELAY)
                await asyncio.sleep(_RETRY_DELAY)

    async def _add_ports(self, key: PoolKey, count: int) -> None:
        ports = await self.neutron.create_ports(
            key.network_id, count, tags=self._pool_tags(key), host_id=self.host,
            device_owner=lifecycle.DEVICE_OWNER, security_group_ids=key.security_group_ids,
            project_id=key.project_id)
        made = await asyncio.gather(*(self._make_ready(p, key) for p in ports),
                                    return_exceptions=True)
        for result in made:
            if isinstance(result, ReadyPort):
                self.ready[key].append(result)
            elif isinstance(result, BaseException):
                LOG.warning("pool %s: a port failed to become ready: %s", key.tag_value(), result)

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

    async def _retag(self, port_id: str, owner_tags: list[str]) -> None:
        try:
            await self.neutron.update_port(port_id, tags=owner_tags)
        except errors.KuryrError as e:
            LOG.error("pool: cannot retag port %s for its container: %s", port_id, e)

    async def _recycle(self, port: resources.Port, key: PoolKey) -> None:
        try:
            self.ready.setdefault(key, []).append(await self._make_ready(port, key))
        except errors.KuryrError as e:
            LOG.warning("pool: recycling port %s failed (%s); deleted it", port.id, e)
            await self._forget(port.id)
        finally:
            self._recycling -= 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- after a restart ------------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Find this host's pool ports in Neutron: those still plugged in the pool namespace
        are ready again, the others are released. Returns how many are ready."""
        # Only this cluster's ports: another cluster's pool on the same host is not ours.
        ports = await self.neutron.list_ports(
            tags=[*self.neutron.base_tags, tagging.owner(TAG_POOL_HOST, self.host)],
            device_owner=lifecycle.DEVICE_OWNER)
        found = 0
        for port in ports:
            raw_key = tagging.value_of(port.tags, TAG_POOL)
            key = PoolKey.from_tag_value(raw_key) if raw_key else None
            plugged = await asyncio.to_thread(interfaces.link_exists, pool_ifname(port.id),
                                              netns=self._netns)
            if key is None or not plugged or port.status != "ACTIVE":
                await self._forget(port.id)
                continue
            vif = await self.neutron.vif_for_port(port)
            self.ready.setdefault(key, []).append(ReadyPort(port=port, vif=vif, key=key))
            found += 1
        LOG.info("pool: %d ready port(s) found again", found)
        return found
