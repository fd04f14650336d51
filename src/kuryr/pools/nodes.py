"""Per-node port pools for the Kubernetes controller: Neutron ports made ahead of demand for a
(node, network, subnet, project, security groups) key, bound to the node (``binding:host_id``)
but not plugged, so that a pod's port is handed out with no Neutron call; the node's daemon
plugs it. Unlike ``warm`` (one daemon's ports, plugged on its own host), this pool lives in the
one controller that leads and serves every node.

State lives in Neutron. Pool ports are tagged ``kuryr-pool-node=<node>`` and
``kuryr-pool=<key>`` besides the cluster's tags, named ``kuryr-pool:<cluster id>`` and carry
``device_id`` ``kuryr-pool-batch:<random>`` until a pod owns them. Neutron tags them in a
second request after the bulk POST, so a crash in between leaves them untagged: ``rebuild``
finds those by name; and a POST that timed out on this side may still create its ports: they
are found by their batch's ``device_id`` and deleted (``sweep``). ``take`` hands a port out of
memory only; the caller records who owns it (the controller: the KuryrPort's status) and
rewrites the port's owner afterwards, off the critical path. ``rebuild`` reads the pool back
after a restart, leaving out the ports the caller says are owned. ``give_back`` takes a
released pod's port back into its node's pool (recycling: one port update, no delete and
create). ``on_change(node)`` is called whenever the ready ports of a node change, so that the
caller can tell the node (its daemon plugs them ahead of their pods).

Owns which keys are kept filled (``want``), refilling them in the background with bulk
creates, and deleting the ports of keys no longer wanted (a node or a network gone). Not what
a key is for: the controller derives the keys from Nodes, Namespaces and KuryrNetworks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Collection, Coroutine, Iterable, Sequence
from typing import Any

from kuryr import errors, model
from kuryr.neutron import client, resources, tagging
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

TAG_POOL = "pool"  # the key, under the same tag name as ``warm`` uses
TAG_POOL_NODE = "pool-node"  # not warm's ``pool-host``: a daemon's pool never sees these
BATCH_PREFIX = "kuryr-pool-batch:"  # the device_id of a pool port no pod owns yet
_SWEEP_FOR = 900.0  # seconds a failed batch is looked for (a POST may land late)


@dataclasses.dataclass(frozen=True)
class NodeKey:
    """Which ports are interchangeable: same node, network, subnet (None: any of the
    network's), project (None: the credentials') and security groups (None: the default)."""

    node: str
    network_id: str
    subnet_id: str | None = None
    project_id: str | None = None
    security_group_ids: tuple[str, ...] | None = None

    def tag_value(self) -> str:
        groups = "+".join(self.security_group_ids) if self.security_group_ids is not None else "*"
        return f"{self.network_id};{self.subnet_id or '*'};{self.project_id or '*'};{groups}"

    @classmethod
    def from_tags(cls, tags: Sequence[str]) -> NodeKey | None:
        node = tagging.value_of(tuple(tags), TAG_POOL_NODE)
        value = tagging.value_of(tuple(tags), TAG_POOL)
        parts = (value or "").split(";")
        if not node or len(parts) != 4:
            return None
        return cls(node=node, network_id=parts[0],
                   subnet_id=None if parts[1] == "*" else parts[1],
                   project_id=None if parts[2] == "*" else parts[2],
                   security_group_ids=None if parts[3] == "*"
                   else tuple(g for g in parts[3].split("+") if g))


@dataclasses.dataclass(frozen=True)
class PooledPort:
    """A pool port: bound to ``key.node``, not plugged, owned by no pod."""

    port: resources.Port
    vif: model.VIF
    key: NodeKey


def pool_node(port: resources.Port) -> str | None:
    """The node whose pool ``port`` belongs to, if it is a pool port."""
    return tagging.value_of(port.tags, TAG_POOL_NODE)


def port_name(cluster_id: str) -> str:
    """The name every pool port of a cluster has until a pod owns it."""
    return f"kuryr-pool:{cluster_id}"


def is_unowned(port: resources.Port) -> bool:
    """Whether no pod owns the pool port: its ``device_id`` names no pod (yet)."""
    return not port.device_id or port.device_id.startswith(BATCH_PREFIX)


# Seconds after a take during which a refill still counts the pods as starting: the takes of
# a burst come before their ports wait for ACTIVE.
TAKES_SETTLE = 2.0


class NodePools:
    """Ready ports by key; ``take`` never calls Neutron. Refills run in the background."""

    def __init__(self, neutron: client.Neutron, *, size: int, batch: int,
                 retry_delay: float = 5.0, busy: Callable[[], bool] = lambda: False,
                 yield_for: float = 10.0,
                 on_change: Callable[[str], None] = lambda node: None) -> None:
        self.neutron = neutron
        self.on_change = on_change
        self.size = size
        self.batch = max(1, batch)
        self.retry_delay = retry_delay
        # While ``busy()`` (pods' ports waiting for ACTIVE), a refill waits, up to
        # ``yield_for`` seconds per batch: on one Neutron its bulk creates would slow the
        # very pods that emptied the pool.
        self.busy = busy
        self.yield_for = yield_for
        self._last_take = float("-inf")
        self.ready: dict[NodeKey, list[PooledPort]] = {}
        self._wanted: set[NodeKey] = set()
        self._refills: dict[NodeKey, asyncio.Task[None]] = {}
        self._discards: set[asyncio.Task[None]] = set()
        # Batch device_id -> when its creation failed; none of its ports was ever ready.
        self._failed: dict[str, float] = {}
        self._undeleted: set[str] = set()  # IDs of ports no longer wanted, to delete again

    @property
    def name(self) -> str:
        return port_name(self.neutron.cluster_id)

    def count(self, key: NodeKey) -> int:
        return len(self.ready.get(key, ()))

    def total(self) -> int:
        return sum(len(ready) for ready in self.ready.values())

    def take(self, key: NodeKey) -> PooledPort | None:
        """A ready port of ``key`` (None if there is none), no longer the pool's; wakes the
        refill. The caller records the port's new owner before anything else."""
        ready = self.ready.get(key) if key in self._wanted else None
        taken = ready.pop(0) if ready else None
        self._last_take = time.monotonic()
        self._wake(key)
        if taken is not None:
            self.on_change(key.node)
        return taken

    def ready_on(self, node: str) -> list[PooledPort]:
        """The ready ports of ``node``, of every key."""
        return [p for key, ready in self.ready.items() if key.node == node for p in ready]

    def key_for(self, port: resources.Port) -> NodeKey | None:
        """The wanted key a pod's ``port`` fits (its node, network, subnet and project), if
        any: where ``give_back`` would put it."""
        subnets = {f.subnet_id for f in port.fixed_ips}
        for key in self._wanted:
            if key.node == port.host_id and key.network_id == port.network_id \
                    and (key.subnet_id is None or key.subnet_id in subnets) \
                    and (key.project_id is None or key.project_id == port.project_id):
                return key
        return None

    def has_room(self, key: NodeKey) -> bool:
        return key in self._wanted and self.count(key) < self.size

    async def give_back(self, port_id: str, key: NodeKey, *, port_project: str) -> bool:
        """Make a released pod's port a ready port of ``key`` again if that pool has room:
        renamed, untagged from its pod, given the key's security groups and a batch
        ``device_id`` in one update. False (nothing done): the caller deletes it. Raises
        TemporaryError, NotFoundError."""
        if not self.has_room(key):
            return False
        wanted = key.security_group_ids
        if wanted is None:  # the pool's ports have their project's default group
            found = await self.neutron.list_security_groups(name="default",
                                                            project_id=port_project)
            if len(found) != 1:
                return False
            wanted = (found[0].id,)
        port = await self.neutron.update_port(
            port_id, name=self.name, device_id=f"{BATCH_PREFIX}recycled",
            tags=self._tags(key), security_group_ids=list(wanted))
        vif = (await self._vifs([port]))[port.id]
        if not self.has_room(key):  # filled meanwhile
            await self._delete([port.id])
            return True
        self.ready.setdefault(key, []).append(PooledPort(port=port, vif=vif, key=key))
        self.on_change(key.node)
        LOG.info("pool %s %s: port %s recycled", key.node, key.network_id, port.id)
        return True

    async def want(self, keys: Iterable[NodeKey]) -> None:
        """Keep the pools of exactly ``keys`` filled: refill those below ``size`` and delete
        the ready ports of every other key (its node or network is gone)."""
        keys = set(keys) if self.size > 0 else set()
        gone = (self._wanted | set(self.ready) | set(self._refills)) - keys
        self._wanted = keys
        for key in keys:
            self._wake(key)
        if gone:
            await self._drop(gone)

    async def drop_network(self, network_id: str) -> None:
        """Stop keeping pools on ``network_id`` and delete their ready ports (the network is
        about to be deleted). ``want`` may keep them again later."""
        keys = {k for k in (*self._wanted, *self.ready, *self._refills)
                if k.network_id == network_id}
        self._wanted -= keys
        await self._drop(keys)

    async def close(self) -> None:
        """Stop refilling; ready ports stay in Neutron (``rebuild`` finds them again)."""
        tasks = list(self._refills.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._discards, return_exceptions=True)  # spawned by cancelling
        self._refills.clear()

    # -- filling --------------------------------------------------------------------------------
    def _wake(self, key: NodeKey) -> None:
        if key not in self._wanted or self.count(key) >= self.size:
            return
        task = self._refills.get(key)
        if task is None or task.done():
            self._refills[key] = asyncio.get_running_loop().create_task(
                self._refill(key), name=f"pool refill {key.node} {key.network_id}")

    async def _refill(self, key: NodeKey) -> None:
        delay = self.retry_delay
        while key in self._wanted and self.count(key) < self.size:
            await self._yield()
            wanted = min(self.batch, self.size - self.count(key))
            try:
                await self._add(key, wanted)
                delay = self.retry_delay
            except errors.KuryrError as e:
                # Backing off: a busy Neutron still works through requests we gave up on.
                LOG.warning("pool %s %s: cannot add %d port(s): %s; again in %g s", key.node,
                            key.tag_value(), wanted, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 120.0)

    async def _yield(self) -> None:
        """Let the pods being started go first (``busy``), for at most ``yield_for`` s."""
        deadline = time.monotonic() + self.yield_for
        while time.monotonic() < deadline and (  # noqa: ASYNC110 (busy() is a plain call)
                self.busy() or time.monotonic() - self._last_take < TAKES_SETTLE):
            await asyncio.sleep(0.5)

    async def _add(self, key: NodeKey, count: int) -> None:
        # A Neutron request goes on in its thread when its caller is cancelled: whatever it
        # makes after a cancellation is deleted once it is known.
        creating = asyncio.ensure_future(self._create(key, count))
        try:
            made = await asyncio.shield(creating)
        except asyncio.CancelledError:
            self._spawn_discard(self._discard(creating))
            raise
        if key in self._wanted:
            self.ready.setdefault(key, []).extend(made)
            self.on_change(key.node)
        else:
            await self._delete([p.port.id for p in made])

    async def _create(self, key: NodeKey, count: int) -> list[PooledPort]:
        """``count`` new ports of ``key`` with their VIFs; on failure none is left (at once,
        or once ``sweep`` finds what a failed request made anyway)."""
        await self.sweep()
        batch = f"{BATCH_PREFIX}{uuid.uuid4().hex}"
        try:
            ports = await self.neutron.create_ports(
                key.network_id, count, tags=self._tags(key), host_id=key.node,
                device_owner=lifecycle.DEVICE_OWNER, security_group_ids=key.security_group_ids,
                project_id=key.project_id, name=self.name, device_id=batch,
                fixed_ips=[{"subnet_id": key.subnet_id}] if key.subnet_id else None)
        except (errors.TemporaryError, asyncio.CancelledError):
            self._failed[batch] = time.monotonic()  # Neutron may have made them all the same
            raise
        try:
            vifs = await self._vifs(ports)
        except BaseException:
            self._failed[batch] = time.monotonic()  # what cannot be deleted now, ``sweep`` will
            await asyncio.shield(self._delete([p.id for p in ports]))
            raise
        LOG.info("pool %s %s: %d port(s) added", key.node, key.network_id, len(ports))
        return [PooledPort(port=p, vif=vifs[p.id], key=key) for p in ports]

    async def _discard(self, creating: asyncio.Future[list[PooledPort]]) -> None:
        with contextlib.suppress(Exception):
            made = await creating
            await self._delete([p.port.id for p in made])

    def _spawn_discard(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    def _tags(self, key: NodeKey) -> list[str]:
        return [tagging.owner(TAG_POOL_NODE, key.node), tagging.owner(TAG_POOL, key.tag_value())]

    async def _vifs(self, ports: Sequence[resources.Port]) -> dict[str, model.VIF]:
        """The VIF of each port, fetching each network and subnet once."""
        network_ids = {p.network_id for p in ports}
        subnet_ids = {f.subnet_id for p in ports for f in p.fixed_ips}
        nets = await asyncio.gather(*(self.neutron.get_network(n) for n in network_ids))
        subnets = await asyncio.gather(*(self.neutron.get_subnet(s) for s in subnet_ids))
        by_network = {n.id: n for n in nets}
        return {p.id: resources.vif(p, by_network[p.network_id], subnets) for p in ports}

    # -- removing -------------------------------------------------------------------------------
    async def sweep(self) -> None:
        """Delete the ports of batches whose creation failed here (a request that timed out
        may still have made them, untagged), for ``_SWEEP_FOR`` seconds after each failure.
        Ports that could not be deleted when no longer wanted are deleted again. Raises
        TemporaryError."""
        if self._undeleted:
            await self._delete(list(self._undeleted))
        if not self._failed:
            return
        failed = dict(self._failed)
        found = [p.id for p in await self.neutron.list_ports(
            name=self.name, device_owner=lifecycle.DEVICE_OWNER) if p.device_id in failed]
        if found:
            LOG.warning("pool: deleting %d port(s) of failed batches", len(found))
            await self._delete(found)
        for batch, failed_at in failed.items():
            if time.monotonic() - failed_at > _SWEEP_FOR:
                self._failed.pop(batch, None)

    async def _drop(self, keys: Collection[NodeKey]) -> None:
        refills = [self._refills.pop(k) for k in keys if k in self._refills]
        for task in refills:
            task.cancel()
        await asyncio.gather(*refills, return_exceptions=True)
        await asyncio.gather(*self._discards, return_exceptions=True)
        dropped = [p.port.id for k in keys for p in self.ready.pop(k, [])]
        for node in {k.node for k in keys}:
            self.on_change(node)
        if dropped:
            LOG.info("pool: deleting %d port(s) no longer wanted", len(dropped))
        await self._delete(dropped)

    async def _delete(self, port_ids: Sequence[str]) -> None:
        """Delete ports; one that cannot be is logged and deleted again by ``sweep``."""
        results = await asyncio.gather(*(self.neutron.delete_port(p) for p in port_ids),
                                       return_exceptions=True)
        for port_id, result in zip(port_ids, results, strict=True):
            if isinstance(result, errors.KuryrError):
                LOG.warning("pool: cannot delete port %s: %s", port_id, result)
                self._undeleted.add(port_id)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._undeleted.discard(port_id)

    # -- after a restart ------------------------------------------------------------------------
    async def rebuild(self, *, owned: Collection[str], nodes: Collection[str]) -> int:
        """Read the pool back from Neutron: this cluster's pool ports that are neither in
        ``owned`` (IDs the caller has recorded as a pod's) nor handed out (a ``device_id``
        naming a pod) are ready again for their key. Those of nodes not in ``nodes``, and those
        a crash left untagged, are deleted. Returns how many are ready. Raises
        TemporaryError."""
        ports = await self.neutron.list_ports(name=self.name,
                                              device_owner=lifecycle.DEVICE_OWNER)
        base = set(self.neutron.base_tags)
        keep: list[tuple[resources.Port, NodeKey]] = []
        stale: list[str] = []
        for port in ports:
            if port.id in owned or not is_unowned(port):
                continue
            key = NodeKey.from_tags(port.tags)
            if key is None or not base <= set(port.tags) or key.node not in nodes \
                    or port.host_id != key.node:
                stale.append(port.id)
            else:
                keep.append((port, key))
        vifs = await self._vifs([p for p, _ in keep])
        for port, key in keep:
            self.ready.setdefault(key, []).append(PooledPort(port=port, vif=vifs[port.id],
                                                             key=key))
        await self._delete(stale)
        for node in {k.node for _, k in keep}:
            self.on_change(node)
        LOG.info("pool: %d ready port(s) found again; %d deleted (untagged, or of a Node gone)",
                 len(keep), len(stale))
        return len(keep)
