"""Fixtures for the controller against the Kubernetes API double and the real local Neutron.

Each test gets its own cluster id (so its Neutron resources are told apart by tag), a fresh
API double, a subnet pool and a router; at teardown everything tagged for that cluster is
unplugged and removed whatever the test did, then the pool and the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kuryr import binding, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.controller import networks, running
from kuryr.neutron import client, tagging
from tests.conftest import RUN_ID
from tests.support import k8s


@dataclasses.dataclass
class Cluster:
    """One test's cluster: the API double, the settings a controller uses, and Neutron."""

    api: k8s.Api
    config: settings.KuryrSettings
    neutron: client.Neutron

    @property
    def cluster_id(self) -> str:
        return self.config.cluster_id

    @property
    def node(self) -> str:
        return self.config.binding.host

    def create_namespace(self, name: str, *, project: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if project:
            meta["annotations"] = {"openstack.org/kuryr-project": project}
        return self.api.store.create(k8s.NAMESPACES, None, {"metadata": meta})

    def create_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.api.store.create(k8s.PODS, namespace, {
            "metadata": {"name": name},
            "spec": {"nodeName": self.node, "containers": [{"name": "c", "image": "i"}]}})

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete as the kubelet finishes it: with no grace period."""
        with contextlib.suppress(Exception):
            self.api.store.delete(k8s.PODS, namespace, name, grace=0)

    def delete_namespace(self, name: str) -> None:
        self.api.store.delete(k8s.NAMESPACES, None, name)
        # Pods of a terminating namespace are finished by their kubelets.
        for pod in self.api.store.list(k8s.PODS, name)[0]:
            self.delete_pod(name, pod["metadata"]["name"])

    def get(self, resource: k8s.Resource, namespace: str | None,
            name: str) -> dict[str, Any] | None:
        try:
            return self.api.store.get(resource, namespace, name)
        except Exception:
            return None

    def vif(self, namespace: str, name: str) -> dict[str, Any] | None:
        port = self.get(k8s.KURYR_PORTS, namespace, name)
        vifs = ((port or {}).get("status") or {}).get("vifs") or {}
        found = vifs.get("eth0", {}).get("vif")
        return found if isinstance(found, dict) else None

    async def ports(self) -> list[Any]:
        return await self.neutron.list_ports(tags=list(self.neutron.base_tags))

    async def networks(self) -> list[Any]:
        return await self.neutron.list_networks(tags=list(self.neutron.base_tags))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environ(cluster: Cluster, **options: str) -> dict[str, str]:
    """The environment of a ``kuryr`` subprocess for ``cluster``; ``options`` are more
    ``[kubernetes]`` options (``leader_election="true"``). Without leader election by
    default: a Lease lives in a namespace (``kube-system``), and every namespace costs a
    Neutron network."""
    kubernetes = cluster.config.kubernetes
    assert cluster.config.source is not None
    return {**os.environ, "KURYR_CONFIG": cluster.config.source,
            "KURYR_CLUSTER_ID": cluster.cluster_id,
            "KURYR_KUBERNETES_API_ROOT": str(kubernetes.api_root),
            "KURYR_KUBERNETES_POD_SUBNET_POOL": str(kubernetes.pod_subnet_pool),
            "KURYR_KUBERNETES_POD_ROUTER": str(kubernetes.pod_router),
            "KURYR_KUBERNETES_PORT_ACTIVE_POLL": "0.2",
            "KURYR_KUBERNETES_LEADER_ELECTION": "false",
            "KURYR_KUBERNETES_HEALTH_PORT": str(free_port()),
            **{f"KURYR_KUBERNETES_{k.upper()}": v for k, v in options.items()}}


Start = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def start_controller(cluster: Cluster, tmp_path: pathlib.Path) -> AsyncIterator[Start]:
    """Starts ``kuryr controller`` processes (keyword arguments: more ``[kubernetes]``
    options), logging to ``controller-<n>.log`` in the test's directory; any still running
    are stopped at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def start(**options: str) -> asyncio.subprocess.Process:
        with (tmp_path / f"controller-{len(started)}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kuryr", "controller", env=environ(cluster, **options),
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def eventually(check: Callable[[], Any | Awaitable[Any]], *, within: float = 30,
                     what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {within} s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(cloud_config: settings.KuryrSettings) -> AsyncIterator[Cluster]:
    n = uuid.uuid4().int % 64
    cluster_id = f"kt{RUN_ID}{uuid.uuid4().hex[:4]}"
    neutron = client.Neutron(client.connect(cloud_config.neutron), cluster_id=cluster_id)
    test_tag = tagging.owner("test", RUN_ID)
    pool = await neutron.create_subnet_pool(f"kt-{cluster_id}", prefixes=[f"100.{64 + n}.0.0/16"],
                                            default_prefix_length=26, tags=[test_tag])
    router = await neutron.create_router(f"kt-{cluster_id}", tags=[test_tag])
    resources = [*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES]
    try:
        async with k8s.serve(resources=resources, namespaces=(), bookmark_interval=5) as api:
            kubernetes = settings.KubernetesSettings(
                api_root=api.url, pod_subnet_pool=pool.id, pod_router=router.id,
                port_active_poll=0.2, health_port=free_port(), leader_election=False)
            config = dataclasses.replace(cloud_config, cluster_id=cluster_id,
                                         kubernetes=kubernetes)
            yield Cluster(api=api, config=config, neutron=neutron)
    finally:
        await _remove_cluster(neutron, cloud_config)
        await neutron.delete_router(router.id)
        await neutron.delete_subnet_pool(pool.id)
        neutron.close()


async def _remove_cluster(neutron: client.Neutron, cloud_config: settings.KuryrSettings) -> None:
    binder = ovs_binding.OvsBinder(cloud_config.binding)
    try:
        for port in await neutron.list_ports(tags=list(neutron.base_tags)):
            await asyncio.to_thread(binder.unplug_sync, port.id)
            await neutron.delete_port(port.id)
    finally:
        binder.close()
    for net in await neutron.list_networks(tags=list(neutron.base_tags)):
        await networks.release_network(neutron, net.id)


@pytest.fixture
def binders(cloud_config: settings.KuryrSettings) -> Any:
    made = binding.binders(cloud_config.binding)
    yield made
    for b in made.values():
        b.close()


@pytest.fixture
async def controller(cluster: Cluster) -> AsyncIterator[asyncio.Task[None]]:
    """The controller running in this process against the cluster, stopped at teardown."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(running.run(cluster.config, stop=stop, ready=ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiting], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()
    yield task
    stop.set()
    await asyncio.wait_for(task, timeout=10)
