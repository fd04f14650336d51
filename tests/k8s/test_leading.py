"""Leader election against the API double, in this process: of two candidates exactly one
leads; the other takes over only once the Lease has expired, or at once when it is released;
a leader that can no longer renew steps down. No Neutron."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from kuryr import settings
from kuryr.controller import leading
from kuryr.k8s import api
from tests.support import k8s

FAST = settings.KubernetesSettings(lease_namespace="kube-system", lease_duration=2.0,
                                   lease_renew=0.5, lease_retry=0.2)


async def _candidate(url: str, name: str) -> tuple[api.Kube, leading.Elector]:
    kube = await api.connect(dataclasses.replace(FAST, api_root=url))
    return kube, leading.Elector(kube, FAST, identity=name)


async def test_one_leads_the_other_takes_over_after_expiry_or_release() -> None:
    async with k8s.serve() as double:
        (kube_a, a), (kube_b, b) = (await _candidate(double.url, "a"),
                                    await _candidate(double.url, "b"))
        stop_a, stop_b, lost_a = asyncio.Event(), asyncio.Event(), asyncio.Event()
        try:
            assert await a.acquire(stop_a)
            holding = asyncio.create_task(a.hold(stop_a, lost_a))
            waiting = asyncio.create_task(b.acquire(stop_b))
            await asyncio.sleep(3 * FAST.lease_duration / 2)
            assert not waiting.done() and not lost_a.is_set(), "two leaders"
            lease = double.store.get(k8s.LEASES, "kube-system", "kuryr-controller")
            assert lease["spec"]["holderIdentity"] == "a"

            stop_a.set()  # a stops renewing without releasing: b waits for expiry
            await holding
            stopped = time.monotonic()
            assert await asyncio.wait_for(waiting, timeout=5)
            took = time.monotonic() - stopped
            assert FAST.lease_duration - FAST.lease_renew <= took < FAST.lease_duration + 1.0
            lease = double.store.get(k8s.LEASES, "kube-system", "kuryr-controller")
            assert lease["spec"]["holderIdentity"] == "b"
            assert lease["spec"]["leaseTransitions"] == 1

            await b.release()  # a graceful stop: the next candidate need not wait
            started = time.monotonic()
            assert await a.acquire(asyncio.Event())
            assert time.monotonic() - started < 0.5

            lost_b = asyncio.Event()  # b, no longer the holder, learns it on its next renewal
            b.is_leader = True
            await asyncio.wait_for(b.hold(asyncio.Event(), lost_b), timeout=5)
            assert lost_b.is_set()
        finally:
            await kube_a.close()
            await kube_b.close()


async def test_leader_steps_down_when_the_api_stops_answering() -> None:
    async with k8s.serve() as double:
        kube, elector = await _candidate(double.url, "solo")
        try:
            assert await elector.acquire(asyncio.Event())
            double.fail("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/"
                        "kuryr-controller", status=503, times=None)
            lost = asyncio.Event()
            started = time.monotonic()
            await asyncio.wait_for(elector.hold(asyncio.Event(), lost), timeout=5)
            took = time.monotonic() - started
            assert lost.is_set() and not elector.is_leader
            # Before any follower could think the Lease expired.
            assert took < FAST.lease_duration, took
        finally:
            await kube.close()
