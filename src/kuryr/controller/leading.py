"""Leader election on a ``coordination.k8s.io/v1`` Lease: of the controllers running, only
the holder of the Lease acts; the others wait to take it over.

Owns the Lease record (``holderIdentity``, ``leaseDurationSeconds``, ``acquireTime``,
``renewTime``, ``leaseTransitions``) and its timing (``[kubernetes] lease_*``). Not what the
leader does (``kuryr.controller.running``). Every write is a create or a PUT conditional on
the ``resourceVersion`` just read, so two candidates never both win: the slower gets 409
(TemporaryError) and reads again. Expiry is judged as client-go judges it, by this process's
own clock from when it last saw the record change, so the nodes' clocks need not agree. The
leader steps down (``lost``) once it has failed to renew for ``lease_duration -
lease_renew`` seconds, before any follower can consider the Lease expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import socket
import time
import uuid

from kuryr import errors, settings
from kuryr.k8s import api, resources

LOG = logging.getLogger(__name__)


def _now_stamp() -> str:
    """A Kubernetes MicroTime for now."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Elector:
    """One candidate for the Lease ``[kubernetes] lease_namespace/lease_name``."""

    def __init__(self, kube: api.Kube, config: settings.KubernetesSettings, *,
                 identity: str | None = None) -> None:
        """Raises ConfigError unless ``lease_retry <= lease_renew < lease_duration``."""
        if not config.lease_retry <= config.lease_renew < config.lease_duration:
            raise errors.ConfigError(
                "[kubernetes] needs lease_retry <= lease_renew < lease_duration, not "
                f"{config.lease_retry}, {config.lease_renew}, {config.lease_duration}")
        self._kube = kube
        self._config = config
        self.identity = identity or f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.is_leader = False
        # (resourceVersion, monotonic time it was first seen): the basis of expiry.
        self._observed: tuple[str, float] | None = None
        self.last_contact = 0.0  # monotonic time of the last answer from the API

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the Lease (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if await self._attempt():
                self.is_leader = True
                LOG.info("leader election: %s leads (lease %s/%s)", self.identity,
                         self._config.lease_namespace, self._config.lease_name)
                return True
            await _sleep(stop, self._config.lease_retry)
        return False

    async def hold(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Renew the Lease until ``stop`` is set; on losing it (taken by another, or not
        renewed for ``lease_duration - lease_renew`` seconds, counted from the sending of the
        last successful renewal) set ``lost`` and return."""
        config = self._config
        margin = config.lease_duration - config.lease_renew
        deadline = time.monotonic() + margin
        pause = config.lease_renew
        while not stop.is_set():
            await _sleep(stop, max(0.0, min(pause, deadline - time.monotonic())))
            if stop.is_set():
                return
            sent = time.monotonic()
            if deadline > sent and await self._attempt(within=deadline - sent):
                deadline, pause = sent + margin, config.lease_renew
                continue
            pause = config.lease_retry
            if not self.is_leader or time.monotonic() >= deadline:
                LOG.warning("leader election: %s lost the lease", self.identity)
                self.is_leader = False
                lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up, so that a follower takes over at once. Best effort."""
        if not self.is_leader:
            return
        self.is_leader = False
        config = self._config
        try:
            lease = await self._kube.get(resources.LEASES, config.lease_namespace,
                                         config.lease_name)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_now_stamp())
            await self._kube.replace(resources.LEASES, config.lease_namespace,
                                     config.lease_name,
                                     {"metadata": lease["metadata"], "spec": spec})
            LOG.info("leader election: %s released the lease", self.identity)
        except errors.KuryrError as e:
            LOG.warning("leader election: cannot release the lease: %s", e)

    async def _attempt(self, *, within: float | None = None) -> bool:
        """One try to take or renew the Lease, bounded by ``lease_retry`` (at least 1 s) and
        ``within``; False if another holds it or the API did not answer in time."""
        bound = max(self._config.lease_retry, 1.0)
        try:
            async with asyncio.timeout(bound if within is None else min(bound, within)):
                return await self._take_or_renew()
        except (errors.KuryrError, TimeoutError) as e:
            LOG.warning("leader election: %s", e or "the API did not answer in time")
            return False

    async def _take_or_renew(self) -> bool:
        config = self._config
        namespace, name = config.lease_namespace, config.lease_name
        stamp = _now_stamp()
        duration = math.ceil(config.lease_duration)
        try:
            lease = await self._kube.get(resources.LEASES, namespace, name)
        except errors.NotFoundError:
            first: api.Object = {
                "holderIdentity": self.identity, "leaseDurationSeconds": duration,
                "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}
            made = await self._kube.create(resources.LEASES, namespace,
                                           {"metadata": {"name": name, "namespace": namespace},
                                            "spec": first})
            self._seen(made)
            return True
        now = self._seen(lease)
        spec: api.Object = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            self.is_leader = False
            assert self._observed is not None
            held_for = float(spec.get("leaseDurationSeconds") or config.lease_duration)
            if now < self._observed[1] + held_for:
                return False
        if holder != self.identity:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=duration,
                    renewTime=stamp)
        updated = await self._kube.replace(resources.LEASES, namespace, name,
                                           {"metadata": lease["metadata"], "spec": spec})
        self._seen(updated)
        return True

    def _seen(self, lease: api.Object) -> float:
        """Note an answer from the API and the Lease version in it; returns now."""
        now = time.monotonic()
        self.last_contact = now
        version = str((lease.get("metadata") or {}).get("resourceVersion", ""))
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)
        return now
