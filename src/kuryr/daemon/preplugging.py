"""Kubernetes mode's pre-plugged pool ports: the node daemon plugs the ready pool ports the
controller lists in this node's KuryrNodePool (``kuryr.controller.nodepools``) into the
holding namespace (``kuryr.pools.holding``) before any pod asks, and waits until
ovn-controller has installed them. A pod whose VIF names such a port gets it by a hand-over:
its interface moves into the pod's namespace and is configured there, with no veth made, no
OVS port added and no wait.

The OVS Interface is the record, as for every port of this mode: a held port's
``external_ids`` say ``kuryr-cni-mode=kubernetes-pool``, the cluster and the node; a hand-over
first rewrites them to name the container (``kuryr-cni-mode=kubernetes``, the container ID,
...), so that whatever happens next, no restart mistakes the pod's port for a pool port. After
a restart the held ports are found again from OVS and the holding namespace.

A port the controller no longer lists was taken for a pod (the pod's KuryrPort names it, or
soon will) or deleted: it stays held while a KuryrPort names it, and is unplugged once none
has for ``grace`` seconds. A listed port still plugged for a container (a recycled port whose
old sandbox has not had its DEL yet) is left alone until it is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kuryr import errors, model
from kuryr.binding import ovs as ovs_binding
from kuryr.daemon import locking
from kuryr.k8s import api, resources, watching
from kuryr.linux import interfaces, namespaces
from kuryr.pools import holding

LOG = logging.getLogger(__name__)

POOL_MODE = "kubernetes-pool"  # the ``kuryr-cni-mode`` of a held port's OVS Interface
ID_POOL_NODE = "kuryr-pool-node"
_LOOK_EVERY = 5.0  # seconds between looks when nothing changes (ports leaving, freed ports)


class PrePlugged:
    """This node's held pool ports. ``run`` lists, watches and keeps them plugged; ``take``
    and ``hand_over`` give one to a pod."""

    def __init__(self, kube: api.Kube, binder: ovs_binding.OvsBinder, *, node: str,
                 cluster_id: str, mode_key: str, cluster_key: str,
                 port_locks: locking.KeyedLocks,
                 in_use: Callable[[], set[str]], ready_timeout: float = 60.0,
                 grace: float = 30.0) -> None:
        self.binder = binder
        self.node = node
        self.cluster_id = cluster_id
        # The external_ids keys naming an Interface's mode and cluster (the daemon's).
        self.mode_key, self.cluster_key = mode_key, cluster_key
        self.port_locks = port_locks
        self.in_use = in_use
        self.ready_timeout = ready_timeout
        self.grace = grace
        self.informer = watching.Informer(
            kube, resources.KURYR_NODE_POOLS, on_change=lambda ns, name: self.wake(),
            label_selector=f"{resources.NODE_LABEL}={node}")
        self.held: set[str] = set()  # plugged in the holding namespace and installed
        self._plugging: dict[str, asyncio.Task[None]] = {}
        self._taken: set[str] = set()  # handed (or being handed) to a pod, maybe still listed
        self._leaving: dict[str, float] = {}  # held, no longer listed: since when
        self._wake = asyncio.Event()
        self._netns = ""
        self.ready = asyncio.Event()  # the held ports were found again after a start

    def wake(self) -> None:
        self._wake.set()

    def owner_ids(self) -> dict[str, str]:
        return {self.mode_key: POOL_MODE, self.cluster_key: self.cluster_id,
                ID_POOL_NODE: self.node}

    def _is_held_here(self, ids: Mapping[str, str]) -> bool:
        return (ids.get(self.mode_key) == POOL_MODE
                and ids.get(self.cluster_key) == self.cluster_id
                and ids.get(ID_POOL_NODE) == self.node)

    # -- running --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Make the holding namespace, find the held ports again, then list and watch this
        node's KuryrNodePool and keep its ports plugged (until cancelled)."""
        self._netns = await asyncio.to_thread(namespaces.create, holding.POOL_NETNS)
        await self._rebuild()
        self.ready.set()
        watch = asyncio.get_running_loop().create_task(
            self.informer.run(), name=f"watch kuryrnodepool {self.node}")
        try:
            while True:
                self._wake.clear()
                if self.informer.synced.is_set():
                    try:
                        await self._reconcile()
                    except errors.KuryrError as e:
                        LOG.warning("pre-plugged pool ports: %s; trying again", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=_LOOK_EVERY)
        finally:
            watch.cancel()
            plugging = [watch, *self._plugging.values()]
            for task in plugging:
                task.cancel()
            await asyncio.gather(*plugging, return_exceptions=True)

    async def _rebuild(self) -> None:
        """Held ports from OVS: those of this node and cluster whose interface is still in the
        holding namespace are held again, the others unplugged."""
        owned = await asyncio.to_thread(self.binder.owned_ports)
        for port_id, ids in owned.items():
            if not self._is_held_here(ids):
                continue
            if await asyncio.to_thread(interfaces.link_exists, holding.pool_ifname(port_id),
                                       netns=self._netns):
                self.held.add(port_id)
            else:
                await asyncio.to_thread(self.binder.unplug_sync, port_id)
        LOG.info("pre-plugged pool ports: %d found again", len(self.held))

    def listed(self) -> dict[str, Any]:
        """The ports this node's KuryrNodePool lists: port ID -> VIF dict."""
        found = self.informer.get("", self.node) or {}
        return dict((found.get("status") or {}).get("ports") or {})

    async def _reconcile(self) -> None:
        listed = self.listed()
        self._taken &= set(listed)  # a taken port the controller no longer lists is done with
        owned = await asyncio.to_thread(self.binder.owned_ports)
        for port_id, raw in listed.items():
            self._leaving.pop(port_id, None)
            if port_id in self.held or port_id in self._plugging or port_id in self._taken:
                continue
            ids = owned.get(port_id)
            if ids is not None and not self._is_held_here(ids):
                continue  # still plugged for a container (its DEL has not come yet)
            try:
                vif = model.VIF.from_dict(raw)
            except (errors.KuryrError, KeyError, TypeError, ValueError) as e:
                LOG.warning("pool port %s: unusable VIF in the KuryrNodePool: %s", port_id, e)
                continue
            self._plugging[port_id] = asyncio.get_running_loop().create_task(
                self._plug(vif), name=f"pre-plug {port_id}")
        now = time.monotonic()
        in_use = self.in_use() if any(p not in listed for p in self.held) else set()
        for port_id in sorted(self.held - set(listed)):
            since = self._leaving.setdefault(port_id, now)
            if port_id not in in_use and now - since >= self.grace:
                await self._unplug(port_id)

    async def _plug(self, vif: model.VIF) -> None:
        port_id = vif.port_id
        try:
            async with self.port_locks.hold(port_id, timeout=self.ready_timeout):
                if port_id in self._taken:
                    return
                await self.binder.plug(vif, netns=self._netns,
                                       ifname=holding.pool_ifname(port_id),
                                       owner_ids=self.owner_ids())
                try:
                    await self.binder.wait_ready(vif, timeout=self.ready_timeout)
                except errors.KuryrError:
                    await asyncio.to_thread(self.binder.unplug_sync, port_id)
                    raise
            self.held.add(port_id)
            LOG.info("pool port %s plugged ahead in %s", port_id, holding.POOL_NETNS)
        except errors.KuryrError as e:
            LOG.warning("pool port %s: cannot plug it ahead: %s", port_id, e)
        finally:
            self._plugging.pop(port_id, None)

    async def _unplug(self, port_id: str) -> None:
        async with self.port_locks.hold(port_id, timeout=self.ready_timeout):
            if port_id not in self.held:
                return
            self.held.discard(port_id)
            self._leaving.pop(port_id, None)
            ids = (await asyncio.to_thread(self.binder.owned_ports)).get(port_id)
            if ids is not None and self._is_held_here(ids):
                await asyncio.to_thread(self.binder.unplug_sync, port_id)
        LOG.info("pool port %s unplugged: no longer this node's", port_id)

    # -- handing over -----------------------------------------------------------------------------
    async def take(self, port_id: str) -> bool:
        """Whether ``port_id`` is held (waiting, bounded, for a plug under way); if so it is
        the caller's now: hand it over or unplug it. Call it without the port's lock."""
        self._taken.add(port_id)
        plugging = self._plugging.get(port_id)
        if plugging is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(plugging), timeout=self.ready_timeout)
        if port_id in self.held:
            self.held.discard(port_id)
            self._leaving.pop(port_id, None)
            return True
        return False

    def hand_over(self, vif: model.VIF, *, netns: str, ifname: str,
                  owner_ids: Mapping[str, str]) -> None:
        """Record the container on the port's OVS Interface, then move its held interface
        into ``netns`` as ``ifname`` and configure it (blocking; run in a thread). Raises
        NamespaceNotFoundError, BindingError, PermanentError."""
        namespaces.resolve(netns)  # a missing sandbox costs nothing yet
        # The durable record first: from here on the port is the container's.
        self.binder.ovsdb.set_external_ids(ovs_binding.host_ifname(vif.port_id),
                                           dict(owner_ids))
        holding.hand_over(vif, pool_netns=self._netns, netns=netns, ifname=ifname)
