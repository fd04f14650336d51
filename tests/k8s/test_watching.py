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
