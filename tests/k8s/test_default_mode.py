"""The ``default`` subnet driver (``[kubernetes] pod_subnets_driver = default``): pods of every
namespace get ports on the one subnet ``pod_subnet``, in the project their namespace's
annotation names, and no namespace gets a network of its own; with the pool on, pods take
pool ports of their project. Ports plugged into real namespaces ping across namespaces (of
one project: another project's ports have that project's default security group)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from kuryr import model
from kuryr.ports import lifecycle
from tests.conftest import RUN_ID
from tests.k8s.conftest import Cluster, eventually, metrics, running_controller
from tests.support import k8s, peers


async def _default_subnet(cluster: Cluster) -> Any:
    """A network and subnet standing for an operator's pod subnet (the cluster's teardown
    removes them)."""
    network = await cluster.neutron.create_network(f"kt-{cluster.cluster_id}-pods")
    return await cluster.neutron.create_subnet(
        network.id, cidr=f"100.126.{uuid.uuid4().int % 256}.0/24", name=f"kt-{RUN_ID}")


async def test_pods_of_two_namespaces_share_the_default_subnet(
        cluster: Cluster, binders: Any, make_netns: Any) -> None:
    subnet = await _default_subnet(cluster)
    other_project = f"kt-{cluster.cluster_id}-other"
    async with running_controller(cluster, pod_subnets_driver="default", pod_subnet=subnet.id):
        placed = (("one", "a"), ("two", "b"), ("three", "c"))
        cluster.create_namespace("one")
        cluster.create_namespace("two")
        cluster.create_namespace("three", project=other_project)
        for namespace, name in placed:
            cluster.create_pod(namespace, name)
        vifs = {}
        for namespace, name in placed:
            raw = await eventually(lambda ns=namespace, n=name: cluster.vif(ns, n),
                                   what=f"VIF of {namespace}/{name}")
            vifs[name] = model.VIF.from_dict(raw)
            assert vifs[name].network_id == subnet.network_id
            assert [f.subnet_id for f in vifs[name].fixed_ips] == [subnet.id]
        projects = {n: (await cluster.neutron.get_port(v.port_id)).project_id
                    for n, v in vifs.items()}
        assert projects["c"] == other_project and projects["a"] == projects["b"] != other_project
        assert not cluster.api.store.list(k8s.KURYR_NETWORKS, None)[0]
        assert {n.id for n in await cluster.networks()} == {subnet.network_id}

        netns = {}
        for name in ("a", "b"):
            netns[name] = make_netns()
            await lifecycle.plug_existing(cluster.neutron, binders, port_id=vifs[name].port_id,
                                          netns=netns[name], ifname="eth0", host=cluster.node)
        address = str(vifs["b"].fixed_ips[0].address.ip)
        assert await asyncio.to_thread(peers.ping_eventually, netns["a"], address, expect=True)
        for name in ("a", "b"):
            await lifecycle.detach(cluster.neutron, binders, port_id=vifs[name].port_id,
                                   netns=netns[name], ifname="eth0", delete_port=False)
        for namespace in ("one", "two", "three"):
            cluster.delete_namespace(namespace)

        async def released() -> bool:
            return not await cluster.neutron.list_ports(network_id=subnet.network_id,
                                                        device_owner="compute:kuryr")

        await eventually(released, what="the pods' ports released")


async def test_default_mode_pools_ports_per_project(cluster: Cluster) -> None:
    subnet = await _default_subnet(cluster)
    other_project = f"kt-{cluster.cluster_id}-other"
    cluster.create_node()
    async with running_controller(cluster, pod_subnets_driver="default", pod_subnet=subnet.id,
                                  pool_size=2, pool_batch=2):
        cluster.create_namespace("one")
        cluster.create_namespace("two", project=other_project)

        async def pools() -> list[Any]:
            found = await cluster.pool_ports()
            ready = (await metrics(cluster)).get(("kuryr_pool_ready_ports", frozenset()), 0)
            return found if len(found) >= 4 and ready >= 4 else []

        pooled = {p.id: p for p in await eventually(pools, what="two pools of two")}
        assert {p.project_id == other_project for p in pooled.values()} == {True, False}
        assert all(p.network_id == subnet.network_id for p in pooled.values())
        cluster.create_pod("two", "b")
        vif = await eventually(lambda: cluster.vif("two", "b"), what="VIF of two/b")
        assert pooled[vif["port_id"]].project_id == other_project
        cluster.delete_namespace("two")
        cluster.delete_namespace("one")

        async def only_subnet_left() -> bool:
            return not await cluster.ports()

        await eventually(only_subnet_left, what="pods' and pool ports removed", within=60)
