"""The informer keeps an exact cache of a resource through what a real API server does to
watches: streams ending, 410 Gone, failing lists."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from kuryr import settings
from kuryr.k8s import api, resources, watching
from tests.k8s.conftest import eventually
from tests.support import k8s


@pytest.fixture
async def double() -> AsyncIterator[k8s.Api]:
    async with k8s.serve(resources=[*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES],
                         bookmark_interval=0.1) as running:
        yield running


async def test_informer_cache_follows_changes_through_dropped_and_expired_watches(
        double: k8s.Api) -> None:
    kube = await api.connect(settings.KubernetesSettings(api_root=double.url))
    changes: list[tuple[str, str]] = []
    informer = watching.Informer(kube, resources.KURYR_PORTS,
                                 on_change=lambda ns, n: changes.append((ns, n)),
                                 watch_timeout=5)
    double.store.create(k8s.KURYR_PORTS, "default", {"metadata": {"name": "before"}})
    double.fail("/apis/openstack.org/v1/kuryrports", status=500, times=1)  # first list fails
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), timeout=5)
        assert set(informer.objects) == {("default", "before")}
        double.store.create(k8s.KURYR_PORTS, "default", {"metadata": {"name": "a"}})
        await eventually(lambda: informer.get("default", "a"), within=5, what="a cached")

        double.drop_watches()
        double.store.patch(k8s.KURYR_PORTS, "default", "a",
                           lambda o: {**o, "spec": {"podUid": "u"}})
        await eventually(lambda: (informer.get("default", "a") or {}).get("spec"), within=5,
                         what="change made while no watch was open")

        double.expire_next_watch()
        double.drop_watches()
        double.store.delete(k8s.KURYR_PORTS, "default", "before")
        await eventually(lambda: informer.get("default", "before") is None, within=5,
                         what="deletion seen after 410 Gone")
        assert ("default", "before") in changes[1:]
        assert set(informer.objects) == {("default", "a")}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.close()


@pytest.mark.parametrize("gone_as_status", [False, True], ids=["error-event", "http-status"])
async def test_informer_lists_again_when_its_version_is_compacted_away(
        gone_as_status: bool) -> None:
    """410 Gone, as an ERROR event in the stream or as the watch request's HTTP status: the
    informer lists afresh, replaces its cache, tells what changed or vanished meanwhile, and
    watches on from the new list's version (never the stale one again)."""
    async with k8s.serve(resources=[*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES],
                         bookmark_interval=0.1, gone_as_status=gone_as_status) as double:
        kube = await api.connect(settings.KubernetesSettings(api_root=double.url))
        changes: list[tuple[str, str]] = []
        informer = watching.Informer(kube, resources.KURYR_PORTS,
                                     on_change=lambda ns, n: changes.append((ns, n)),
                                     watch_timeout=5)
        for name in ("kept", "same", "gone"):
            double.store.create(k8s.KURYR_PORTS, "default", {"metadata": {"name": name}})
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), timeout=5)
            await eventually(lambda: double.open_watches, within=5, what="a watch open")
            changes.clear()
            # While no watch is open, things change and the log is compacted past them.
            double.drop_watches()
            double.store.delete(k8s.KURYR_PORTS, "default", "gone")
            double.store.patch(k8s.KURYR_PORTS, "default", "kept",
                               lambda o: {**o, "spec": {"podUid": "u"}})
            double.store.create(k8s.KURYR_PORTS, "default", {"metadata": {"name": "new"}})
            double.compact()
            await eventually(lambda: informer.get("default", "gone") is None, within=5,
                             what="deletion seen after 410 Gone")
            assert set(informer.objects) == {("default", n) for n in ("kept", "same", "new")}
            assert (informer.get("default", "kept") or {}).get("spec") == {"podUid": "u"}
            assert sorted(set(changes)) == [("default", n) for n in ("gone", "kept", "new")]
            double.store.create(k8s.KURYR_PORTS, "default", {"metadata": {"name": "after"}})
            await eventually(lambda: informer.get("default", "after"), within=5,
                             what="a change after the new list, by the new watch")
            assert informer.error is None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kube.close()


async def test_gone_straight_after_a_list_backs_off_instead_of_hammering_the_api(
        double: k8s.Api) -> None:
    """A server that expires even a fresh list's version (one that cannot keep up) is listed
    again with the same backoff as a failing one, and the informer says it is failing."""
    kube = await api.connect(settings.KubernetesSettings(api_root=double.url))
    informer = watching.Informer(kube, resources.KURYR_PORTS, on_change=lambda ns, n: None,
                                 watch_timeout=5)
    path = "/apis/openstack.org/v1/kuryrports"
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), timeout=5)
        await eventually(lambda: double.open_watches, within=5, what="a watch open")
        double.expire_next_watch(times=1000)
        double.drop_watches()
        started = len(double.requests)
        await asyncio.sleep(2.5)
        lists = [q for m, q in double.requests[started:]
                 if m == "GET" and q.startswith(path) and "watch=" not in q]
        assert 2 <= len(lists) <= 5, lists  # 0.5 + 1 + 2 s of backoff at most
        assert informer.error is not None and informer.failing_for() > 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.close()
