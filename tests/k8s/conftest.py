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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import parser

from kuryr import binding, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.cli import install_cni
from kuryr.controller import networks, running
from kuryr.neutron import client, connecting, tagging
from kuryr.octavia import client as octavia_client
from kuryr.pools import nodes
from tests.conftest import RUN_ID
from tests.support import cni, k8s


@dataclasses.dataclass
class Cluster:
    """One test's cluster: the API double, the settings a controller uses, and Neutron."""

    api: k8s.Api
    config: settings.KuryrSettings
    neutron: client.Neutron
    octavia: octavia_client.Octavia | None = None

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

    def create_node(self, name: str | None = None) -> dict[str, Any]:
        """The Node ``name`` (default: this host, the cluster's node), made if missing."""
        name = name or self.node
        found = self.get(k8s.NODES, None, name)
        return found or self.api.store.create(k8s.NODES, None, {"metadata": {"name": name}})

    def create_pod(self, namespace: str, name: str, *, node: str | None = None
                   ) -> dict[str, Any]:
        """A pod scheduled on ``node`` (default: the cluster's node), whose Node is made
        first if missing."""
        node = self.create_node(node)["metadata"]["name"]
        return self.api.store.create(k8s.PODS, namespace, {
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})

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

    async def pool_ports(self, node: str | None = None) -> list[Any]:
        """The controller's pool ports (of ``node`` only, if given)."""
        return [p for p in await self.ports()
                if nodes.pool_node(p) is not None and node in (None, nodes.pool_node(p))]


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
            **({"KURYR_KUBERNETES_SERVICE_SUBNET": kubernetes.service_subnet,
                "KURYR_KUBERNETES_EXTERNAL_SVC_NET": str(kubernetes.external_svc_net)}
               if kubernetes.service_subnet else {}),
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


async def metrics(cluster: Cluster) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The in-process controller's metrics, scraped as Prometheus does: value by (sample
    name, labels)."""
    url = f"http://127.0.0.1:{cluster.config.kubernetes.health_port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


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


@contextlib.asynccontextmanager
async def making_cluster(cloud_config: settings.KuryrSettings, *,
                         with_services: bool = False) -> AsyncIterator[Cluster]:
    """A test's cluster: its own cluster id, API double, subnet pool and router; with
    ``with_services`` also a service subnet on the router (whose gateway is then on the
    local cloud's external network), the double allocating clusterIPs from its lower half
    and writing EndpointSlices. Everything tagged for the cluster is removed at the end."""
    n = uuid.uuid4().int % 64
    cluster_id = f"kt{RUN_ID}{uuid.uuid4().hex[:4]}"
    neutron = client.Neutron(connecting.connect(cloud_config.neutron), cluster_id=cluster_id)
    octavia = octavia_client.Octavia(
        connecting.connect(cloud_config.neutron,
                           load_balancer_endpoint=cloud_config.octavia.endpoint_override),
        base_tags=neutron.base_tags) if with_services else None
    test_tag = tagging.owner("test", RUN_ID)
    pool = await neutron.create_subnet_pool(f"kt-{cluster_id}", prefixes=[f"100.{64 + n}.0.0/16"],
                                            default_prefix_length=26, tags=[test_tag])
    router = await neutron.create_router(f"kt-{cluster_id}", tags=[test_tag])
    service_net = None
    resources = [*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES]
    try:
        serve_options: dict[str, Any] = {}
        kubernetes = settings.KubernetesSettings(
            pod_subnet_pool=pool.id, pod_router=router.id, port_active_poll=0.2,
            health_port=free_port(), leader_election=False)
        if with_services:
            external = cloud_config.kubernetes.external_svc_net
            if not external:
                pytest.fail("the local cloud's kuryr.conf names no [kubernetes] "
                            "external_svc_net")
            service_net = await neutron.create_network(f"kt-{cluster_id}-services",
                                                       tags=[test_tag])
            # The service subnet's split: clusterIPs from the lower half (the double's
            # service range), Neutron's own ports (router interface) from the upper half.
            m = uuid.uuid4().int % 250
            subnet = await neutron.create_subnet(
                service_net.id, cidr=f"172.30.{m}.0/24", ip_version=4,
                gateway_ip=f"172.30.{m}.254", tags=[test_tag],
                allocation_pools=[{"start": f"172.30.{m}.128", "end": f"172.30.{m}.253"}])
            await neutron.add_router_interface(router.id, subnet.id)
            await neutron.set_router_gateway(router.id, external)
            serve_options = {"service_cidr": f"172.30.{m}.0/25", "endpoint_slices": True}
            kubernetes = dataclasses.replace(kubernetes, service_subnet=subnet.id,
                                             external_svc_net=external)
        async with k8s.serve(resources=resources, namespaces=(), bookmark_interval=5,
                             **serve_options) as api:
            config = dataclasses.replace(
                cloud_config, cluster_id=cluster_id,
                kubernetes=dataclasses.replace(kubernetes, api_root=api.url))
            yield Cluster(api=api, config=config, neutron=neutron, octavia=octavia)
    finally:
        if octavia is not None:
            await _remove_services(neutron, octavia)
        await _remove_cluster(neutron, cloud_config)
        if service_net is not None:
            await neutron.clear_router_gateway(router.id)
            for subnet in await neutron.list_subnets(network_id=service_net.id):
                await neutron.remove_router_interface(router.id, subnet.id)
            await networks.release_network(neutron, service_net.id)
        await neutron.delete_router(router.id)
        await neutron.delete_subnet_pool(pool.id)
        if octavia is not None:
            octavia.close()
        neutron.close()


@pytest.fixture
async def cluster(cloud_config: settings.KuryrSettings) -> AsyncIterator[Cluster]:
    async with making_cluster(cloud_config) as made:
        yield made


async def _remove_services(neutron: client.Neutron, octavia: octavia_client.Octavia) -> None:
    """Whatever a test left of its Services: load balancers, floating IPs, the group."""
    for lb in await octavia.list_load_balancers(tags=list(neutron.base_tags)):
        with contextlib.suppress(Exception):
            await octavia.wait_load_balancer(lb.id, timeout=30)
        await octavia.delete_load_balancer(lb.id, cascade=True)
        await octavia.wait_load_balancer_deleted(lb.id, timeout=60)
    for fip in await neutron.list_floating_ips(tags=list(neutron.base_tags)):
        await neutron.delete_floating_ip(fip.id)


async def _remove_cluster(neutron: client.Neutron, cloud_config: settings.KuryrSettings) -> None:
    binder = ovs_binding.OvsBinder(cloud_config.binding)
    try:
        # Pool ports are found by name too: a batch whose tagging was cut short has no tags.
        for port in [*await neutron.list_ports(tags=list(neutron.base_tags)),
                     *await neutron.list_ports(name=nodes.port_name(neutron.cluster_id))]:
            await asyncio.to_thread(binder.unplug_sync, port.id)
            await neutron.delete_port(port.id)
    finally:
        binder.close()
    for net in await neutron.list_networks(tags=list(neutron.base_tags)):
        await networks.release_network(neutron, net.id)
    for group in await neutron.list_security_groups(tags=list(neutron.base_tags)):
        await neutron.delete_security_group(group.id)
    # Address groups take no tags (Neutron 29): the cluster's are known by their name.
    for address_group in await neutron.list_address_groups():
        if address_group.name.startswith(f"kuryr-{neutron.cluster_id}-ag-"):
            await neutron.delete_address_group(address_group.id)


@pytest.fixture
def binders(cloud_config: settings.KuryrSettings) -> Any:
    made = binding.binders(cloud_config.binding)
    yield made
    for b in made.values():
        b.close()


@contextlib.asynccontextmanager
async def running_controller(cluster: Cluster, **options: Any
                             ) -> AsyncIterator[asyncio.Task[None]]:
    """The controller running in this process against the cluster (keyword arguments: other
    ``[kubernetes]`` settings) for the duration of the block."""
    kubernetes = dataclasses.replace(cluster.config.kubernetes, **options)
    config = dataclasses.replace(cluster.config, kubernetes=kubernetes)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(running.run(config, stop=stop, ready=ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiting], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


@pytest.fixture
async def controller(cluster: Cluster) -> AsyncIterator[asyncio.Task[None]]:
    """The controller running in this process against the cluster, stopped at teardown."""
    async with running_controller(cluster) as task:
        yield task


# Neutron settings no client can be made from: a daemon that tried would fail to start.
UNREACHABLE_NEUTRON = {"KURYR_NEUTRON_CLOUD": "kt-no-such-cloud",
                       "KURYR_NEUTRON_CLOUDS_YAML": "/nonexistent/clouds.yaml",
                       "KURYR_NEUTRON_AUTH_URL": "http://127.0.0.1:9/v3",
                       "KURYR_NEUTRON_ENDPOINT_OVERRIDE": "http://127.0.0.1:9/"}
StartDaemon = Callable[..., cni.DaemonProcess]


@pytest.fixture
def start_daemon(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[StartDaemon]:
    """Starts ``kuryr daemon --mode kubernetes`` processes on the cluster's node (keyword
    arguments: more ``[cni_daemon]`` options; ``mode`` another mode), each with its own
    socket and health port and with Neutron settings that point nowhere. Stopped at
    teardown."""
    started: list[cni.DaemonProcess] = []

    def start(mode: str = "kubernetes", **options: str) -> cni.DaemonProcess:
        env = {**environ(cluster), **UNREACHABLE_NEUTRON, "KURYR_BINDING_HOST": cluster.node,
               **{f"KURYR_CNI_DAEMON_{k.upper()}": v for k, v in options.items()}}
        daemon = cni.DaemonProcess(tmp_path_factory.mktemp("kd"), config_file=None, env=env,
                                   mode=mode)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="session")
def cni_executable(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The ``kuryr`` CNI executable as ``kuryr install-cni`` installs it."""
    return install_cni.install_executable(tmp_path_factory.mktemp("cni-bin"))
