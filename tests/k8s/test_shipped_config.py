"""The controller runs with the ConfigMap as shipped (``deploy/config/configmap.yaml``): its
``[kubernetes]`` values, which name the pods' router and subnet pool by name, not by ID. Only
what must point at this test's cluster is changed: the API, the health port, no leader
election, no Services (the shipped service subnet is not in the local cloud), and the Neutron
names swapped for names of this test's own router and pool."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from kuryr import settings
from kuryr.controller import context
from kuryr.neutron import client, connecting, tagging
from tests.conftest import RUN_ID
from tests.k8s.conftest import Cluster, eventually, free_port, making_cluster, running_controller
from tests.support import k8s

CONFIG_MAP = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "config" / "configmap.yaml"


def shipped() -> settings.KubernetesSettings:
    """The ``[kubernetes]`` section of the shipped ConfigMap's kuryr.conf."""
    config_map = yaml.safe_load(CONFIG_MAP.read_text())
    return settings.parse(config_map["data"]["kuryr.conf"]).kubernetes


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@contextlib.asynccontextmanager
async def routers(cloud_config: settings.KuryrSettings, name: str, count: int
                  ) -> AsyncIterator[list[Any]]:
    """``count`` routers named ``name``, deleted at the end (after the cluster, whose
    teardown removes its subnets' interfaces)."""
    neutron = client.Neutron(connecting.connect(cloud_config.neutron), cluster_id="kt-routers")
    made = []
    try:
        for _ in range(count):
            made.append(await neutron.create_router(
                name, tags=[tagging.owner("test", RUN_ID)]))
        yield made
    finally:
        for router in made:
            await neutron.delete_router(router.id)
        neutron.close()


def _as_shipped(cluster: Cluster, *, router: str) -> dict[str, Any]:
    """The shipped ``[kubernetes]`` values for the in-process controller on ``cluster``."""
    values = dataclasses.replace(
        shipped(), api_root=cluster.config.kubernetes.api_root, health_port=free_port(),
        leader_election=False, service_subnet=None, external_svc_net=None,
        pod_router=router, pod_subnet_pool=f"kt-{cluster.cluster_id}", port_active_poll=0.2)
    return {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}


def test_the_shipped_config_map_names_router_and_pool_by_name() -> None:
    kubernetes = shipped()
    assert kubernetes.pod_subnets_driver == "namespace"
    assert kubernetes.pod_router and not _is_uuid(kubernetes.pod_router), kubernetes.pod_router
    assert kubernetes.pod_subnet_pool and not _is_uuid(kubernetes.pod_subnet_pool)


async def test_namespace_subnets_attach_to_the_router_named_as_in_the_shipped_config_map(
        cloud_config: settings.KuryrSettings) -> None:
    name = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}-pods"
    async with routers(cloud_config, name, 1) as [router], \
            making_cluster(cloud_config) as cluster, \
            running_controller(cluster, **_as_shipped(cluster, router=name)):
        cluster.create_namespace("shipped")
        status = await eventually(
            lambda: (cluster.get(k8s.KURYR_NETWORKS, "shipped", "shipped") or {}).get("status"),
            what="the namespace's network made")
        assert status.get("routerId") == router.id, status
        attached = await cluster.neutron.list_ports(device_owner=context.ROUTER_INTERFACE,
                                                    device_id=router.id)
        assert status["subnetId"] in {ip.subnet_id for p in attached for ip in p.fixed_ips}


@pytest.mark.parametrize("count", [2, 0], ids=["two-routers", "none"])
async def test_a_pod_router_name_that_is_not_one_router_fails_naming_the_option(
        cloud_config: settings.KuryrSettings, count: int) -> None:
    name = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}-pods"
    async with routers(cloud_config, name, count), \
            making_cluster(cloud_config) as cluster, \
            running_controller(cluster, **_as_shipped(cluster, router=name)):
        cluster.create_namespace("shipped")

        def failed() -> dict[str, Any] | None:
            network = cluster.get(k8s.KURYR_NETWORKS, "shipped", "shipped") or {}
            conditions = (network.get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c.get("type") == "Failed"), None)

        condition = await eventually(failed, what="a Failed condition on the KuryrNetwork")
        assert condition["reason"] == "ConfigError", condition
        assert f"[kubernetes] pod_router = {name!r}" in condition["message"], condition
        assert not await cluster.networks(), "nothing made before the router was known"
