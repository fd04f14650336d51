"""The API double's stand-in for the EndpointSlice controller behaves as kube-controller-manager's:
slices follow Services and pods (IPs, readiness, named ports, selectors, deletion), are
grouped by resolved port set, written only when something changed, and seen by watches; all
over real HTTP (aiohttp and kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import k8s
from tests.support.k8s import endpointslices
from tests.unit.test_k8s_double import call

PODS = "/api/v1/namespaces/default/pods"
SERVICES = "/api/v1/namespaces/default/services"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def api() -> AsyncIterator[k8s.Api]:
    async with k8s.serve(service_cidr="10.96.0.0/24", endpoint_slices=True,
                         bookmark_interval=0.1) as running:
        running.store.create(k8s.NODES, None, {"metadata": {
            "name": "n1", "labels": {"topology.kubernetes.io/zone": "az1"}}})
        yield running


@pytest.fixture
async def http(api: k8s.Api) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(api.url) as session:
        yield session


async def make_pod(http: aiohttp.ClientSession, name: str, *, app: str = "web",
                   ports: list[dict[str, Any]] | None = None, node: str | None = "n1",
                   **meta: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "i"}
    if ports:
        container["ports"] = ports
    spec: dict[str, Any] = {"containers": [container]}
    if node:
        spec["nodeName"] = node
    return await call(http, "POST", PODS, {"metadata": {"name": name, "labels": {"app": app},
                                                        **meta}, "spec": spec}, expect=201)


async def make_service(http: aiohttp.ClientSession, name: str = "web", **spec: Any
                       ) -> dict[str, Any]:
    spec.setdefault("selector", {"app": "web"})
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    return await call(http, "POST", SERVICES, {"metadata": {"name": name, "labels": {"tier": "a"}},
                                               "spec": spec}, expect=201)


async def slices(http: aiohttp.ClientSession, service: str = "web") -> list[dict[str, Any]]:
    found = await call(http, "GET", SLICES,
                       params={"labelSelector": f"kubernetes.io/service-name={service}"})
    return list(found["items"])


def endpoints(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Endpoints of all the slices, by pod name."""
    return {e["targetRef"]["name"]: e for s in found for e in s["endpoints"] or []}


def ports_of(piece: dict[str, Any]) -> list[tuple[str, int, str]]:
    return sorted((p["name"], p["port"], p["protocol"]) for p in piece["ports"] or [])


async def test_a_service_gets_a_placeholder_then_its_ready_pods(
        api: k8s.Api, http: aiohttp.ClientSession) -> None:
    service = await make_service(http)
    [placeholder] = await slices(http)
    meta = placeholder["metadata"]
    assert meta["name"].startswith("web-") and meta["generateName"] == "web-"
    assert meta["labels"] == {"tier": "a", endpointslices.SERVICE_NAME: "web",
                              endpointslices.MANAGED_BY: endpointslices.CONTROLLER}
    assert meta["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                        "uid": service["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
    # As the real API server returns a placeholder: no endpoints, no ports, as null.
    assert placeholder["addressType"] == "IPv4"
    assert placeholder["endpoints"] is None and placeholder["ports"] is None
    a = await make_pod(http, "a")
    await make_pod(http, "b")
    await make_pod(http, "other", app="db")
    assert await slices(http) == [placeholder]  # no IPs yet: nothing changed
    api.set_pod_ip("default", "a", "10.0.0.11")
    [piece] = await slices(http)
    assert piece["metadata"]["name"] == meta["name"]  # the placeholder is reused
    assert ports_of(piece) == [("", 8080, "TCP")]
    assert piece["endpoints"] == [{
        "addresses": ["10.0.0.11"],
        "conditions": {"ready": True, "serving": True, "terminating": False},
        "targetRef": {"kind": "Pod", "namespace": "default", "name": "a",
                      "uid": a["metadata"]["uid"]},
        "nodeName": "n1", "zone": "az1"}]
    api.set_pod_ip("default", "b", "10.0.0.12", ready=False)
    found = endpoints(await slices(http))
    assert set(found) == {"a", "b"}
    assert found["b"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    api.set_pod_ip("default", "b", "10.0.0.12")
    assert endpoints(await slices(http))["b"]["conditions"]["ready"] is True
    api.set_pod_ip("default", "a", "10.0.0.21")  # a new IP: a new endpoint in its place
    assert endpoints(await slices(http))["a"]["addresses"] == ["10.0.0.21"]


async def test_slices_are_written_only_when_they_change(api: k8s.Api,
                                                        http: aiohttp.ClientSession) -> None:
    await make_service(http)
    await make_pod(http, "a")
    api.set_pod_ip("default", "a", "10.0.0.11")
    [before] = await slices(http)
    await call(http, "PATCH", f"{PODS}/a", {"metadata": {"annotations": {"x": "1"}}},
               headers=MERGE)
    api.set_pod_ip("default", "a", "10.0.0.11")
    await call(http, "PATCH", f"{SERVICES}/web", {"metadata": {"annotations": {"x": "1"}}},
               headers=MERGE)
    await make_pod(http, "unrelated", app="db")
    assert await slices(http) == [before]
    # The Service's labels are mirrored on its slices (but the controller's own).
    await call(http, "PATCH", f"{SERVICES}/web", {"metadata": {"labels": {"tier": "b"}}},
               headers=MERGE)
    [after] = await slices(http)
    assert after["metadata"]["labels"]["tier"] == "b"
    assert after["metadata"]["labels"][endpointslices.SERVICE_NAME] == "web"
    assert after["endpoints"] == before["endpoints"]
    # A managed slice edited by someone else is put back.
    await call(http, "PATCH", f"{SLICES}/{after['metadata']['name']}", {"endpoints": []},
               headers=MERGE)
    assert endpoints(await slices(http)).keys() == {"a"}


async def test_named_target_ports_resolve_per_pod_into_slices_by_port_set(
        api: k8s.Api, http: aiohttp.ClientSession) -> None:
    await make_service(http, ports=[{"name": "http", "port": 80, "targetPort": "web"},
                                    {"name": "metrics", "port": 9100, "targetPort": 9100}])
    await make_pod(http, "a", ports=[{"name": "web", "containerPort": 8080}])
    await make_pod(http, "b", ports=[{"name": "web", "containerPort": 8080, "protocol": "TCP"}])
    await make_pod(http, "c", ports=[{"name": "web", "containerPort": 9090}])
    await make_pod(http, "d", ports=[{"name": "web", "containerPort": 7070, "protocol": "UDP"}])
    for index, name in enumerate("abcd"):
        api.set_pod_ip("default", name, f"10.0.0.{11 + index}")
    by_ports = {tuple(ports_of(s)): sorted(endpoints([s])) for s in await slices(http)}
    assert by_ports == {
        (("http", 8080, "TCP"), ("metrics", 9100, "TCP")): ["a", "b"],
        (("http", 9090, "TCP"), ("metrics", 9100, "TCP")): ["c"],
        (("metrics", 9100, "TCP"),): ["d"],  # a UDP port does not serve a TCP Service port
    }
    # c moves to a's port: its slice is not needed any more, and goes.
    await call(http, "DELETE", f"{PODS}/c", params={"gracePeriodSeconds": "0"})
    await make_pod(http, "c", ports=[{"name": "web", "containerPort": 8080}])
    api.set_pod_ip("default", "c", "10.0.0.13")
    by_ports = {tuple(ports_of(s)): sorted(endpoints([s])) for s in await slices(http)}
    assert by_ports == {(("http", 8080, "TCP"), ("metrics", 9100, "TCP")): ["a", "b", "c"],
                        (("metrics", 9100, "TCP"),): ["d"]}


async def test_a_selector_change_moves_the_endpoints(api: k8s.Api,
                                                     http: aiohttp.ClientSession) -> None:
    await make_service(http)
    await make_pod(http, "a")
    await make_pod(http, "b", app="db")
    api.set_pod_ip("default", "a", "10.0.0.11")
    api.set_pod_ip("default", "b", "10.0.0.12")
    assert endpoints(await slices(http)).keys() == {"a"}
    await call(http, "PATCH", f"{SERVICES}/web", {"spec": {"selector": {"app": "db"}}},
               headers=MERGE)
    assert endpoints(await slices(http)).keys() == {"b"}
    # A pod relabelled into the selector joins.
    await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"app": "db"}}},
               headers=MERGE)
    [piece] = await slices(http)
    assert endpoints([piece]).keys() == {"a", "b"}
    # New ports: the slice is rewritten in place, not replaced.
    await call(http, "PATCH", f"{SERVICES}/web",
               {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, headers=MERGE)
    [moved] = await slices(http)
    assert moved["metadata"]["name"] == piece["metadata"]["name"]
    assert ports_of(moved) == [("", 9090, "TCP")]
    assert endpoints([moved]).keys() == {"a", "b"}
    # Like upstream, a Service that loses its selector keeps the slices it had.
    await call(http, "PATCH", f"{SERVICES}/web", {"spec": {"selector": None}}, headers=MERGE)
    await call(http, "DELETE", f"{PODS}/a", params={"gracePeriodSeconds": "0"})
    assert [s["metadata"]["name"] for s in await slices(http)] == [piece["metadata"]["name"]]


async def test_a_deleted_pod_is_terminating_then_gone(api: k8s.Api,
                                                      http: aiohttp.ClientSession) -> None:
    await make_service(http)
    await make_pod(http, "held", finalizers=["example.org/hold"])
    await make_pod(http, "graceful")
    api.set_pod_ip("default", "held", "10.0.0.11")
    api.set_pod_ip("default", "graceful", "10.0.0.12")
    await call(http, "DELETE", f"{PODS}/held", params={"gracePeriodSeconds": "0"})
    await call(http, "DELETE", f"{PODS}/graceful")  # on a node: its kubelet finishes it
    found = endpoints(await slices(http))
    for name in ("held", "graceful"):
        assert found[name]["conditions"] == {"ready": False, "serving": True,
                                             "terminating": True}
    await call(http, "DELETE", f"{PODS}/graceful", params={"gracePeriodSeconds": "0"})
    assert endpoints(await slices(http)).keys() == {"held"}
    await call(http, "PATCH", f"{PODS}/held", {"metadata": {"finalizers": None}},
               headers=MERGE)
    [placeholder] = await slices(http)
    assert placeholder["endpoints"] is None


async def test_pods_that_cannot_serve_are_left_out(api: k8s.Api,
                                                   http: aiohttp.ClientSession) -> None:
    await make_service(http, publishNotReadyAddresses=False)
    await make_pod(http, "lost", node="n2")
    await make_pod(http, "done")
    api.set_pod_ip("default", "lost", "10.0.0.11")
    api.set_pod_ip("default", "done", "10.0.0.12")
    await call(http, "PATCH", f"{PODS}/done/status", {"status": {"phase": "Succeeded"}},
               headers=MERGE)
    assert endpoints(await slices(http)) == {}  # a Node that does not exist; a finished pod
    await call(http, "POST", "/api/v1/nodes", {"metadata": {"name": "n2"}}, expect=201)
    found = endpoints(await slices(http))
    assert found.keys() == {"lost"} and "zone" not in found["lost"]


async def test_a_not_ready_pod_is_ready_when_not_ready_addresses_are_published(
        api: k8s.Api, http: aiohttp.ClientSession) -> None:
    await make_service(http, publishNotReadyAddresses=True, clusterIP="None")
    await make_pod(http, "a")
    api.set_pod_ip("default", "a", "10.0.0.11", ready=False)
    [piece] = await slices(http)
    assert piece["metadata"]["labels"][endpointslices.HEADLESS] == ""
    assert piece["endpoints"][0]["conditions"] == {"ready": True, "serving": False,
                                                   "terminating": False}


async def test_slices_go_with_their_service(api: k8s.Api, http: aiohttp.ClientSession) -> None:
    await make_service(http)
    await make_pod(http, "a")
    api.set_pod_ip("default", "a", "10.0.0.11")
    assert len(await slices(http)) == 1
    await call(http, "DELETE", f"{SERVICES}/web")
    assert await slices(http) == []
    api.set_pod_ip("default", "a", "10.0.0.12")
    assert await slices(http) == []


async def test_services_without_selector_get_no_managed_slices(
        api: k8s.Api, http: aiohttp.ClientSession) -> None:
    await make_service(http, "manual", selector=None)
    await make_service(http, "external", type="ExternalName", externalName="x.example",
                       ports=[])
    await make_pod(http, "a")
    api.set_pod_ip("default", "a", "10.0.0.11")
    assert await slices(http, "manual") == [] and await slices(http, "external") == []
    mine = {"metadata": {"name": "manual-1", "labels": {endpointslices.SERVICE_NAME: "manual"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}],
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}
    written = await call(http, "POST", SLICES, mine, expect=201)
    api.set_pod_ip("default", "a", "10.0.0.12")
    assert api.endpoint_slices("default", "manual") == [written]
    [listed] = await slices(http, "manual")
    assert listed["metadata"] == written["metadata"] and listed["endpoints"] == mine["endpoints"]


async def test_a_terminating_namespace_takes_its_slices(api: k8s.Api,
                                                        http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "ns"}}, expect=201)
    await call(http, "POST", "/api/v1/namespaces/ns/services", {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}, expect=201)
    await call(http, "POST", "/api/v1/namespaces/ns/pods", {
        "metadata": {"name": "a", "labels": {"app": "web"}, "finalizers": ["f"]},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}, expect=201)
    api.set_pod_ip("ns", "a", "10.0.0.11")
    assert len(api.endpoint_slices("ns", "web")) == 1
    await call(http, "DELETE", "/api/v1/namespaces/ns")
    assert api.endpoint_slices("ns", "web") == []
    await call(http, "PATCH", "/api/v1/namespaces/ns/pods/a", {"metadata": {"finalizers": None}},
               headers=MERGE)
    await call(http, "DELETE", "/api/v1/namespaces/ns/pods/a",
               params={"gracePeriodSeconds": "0"})
    await call(http, "GET", "/api/v1/namespaces/ns", expect=404)


async def test_endpoints_fill_slices_of_at_most_a_hundred(api: k8s.Api,
                                                          http: aiohttp.ClientSession) -> None:
    await make_service(http)
    for index in range(105):
        name = f"p{index:03d}"
        api.store.create(k8s.PODS, "default", {
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}})
        api.set_pod_ip("default", name, f"10.0.{index // 200}.{index % 200 + 1}")
    found = await slices(http)
    assert sorted(len(s["endpoints"]) for s in found) == [5, 100]
    assert len(endpoints(found)) == 105


async def test_watches_see_slices_added_and_modified(api: k8s.Api,
                                                     http: aiohttp.ClientSession) -> None:
    async with http.get(SLICES, params={"watch": "true"}) as watch:
        await asyncio.sleep(0.05)
        await make_service(http)
        await make_pod(http, "a")
        api.set_pod_ip("default", "a", "10.0.0.11")
        await call(http, "DELETE", f"{SERVICES}/web")
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(2):
            while len(events) < 3:
                events.append(json.loads(await watch.content.readline()))
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[0]["object"]["endpoints"] is None
    assert events[1]["object"]["endpoints"][0]["addresses"] == ["10.0.0.11"]
    assert len({e["object"]["metadata"]["name"] for e in events}) == 1


async def test_kubernetes_asyncio_reads_the_slices(api: k8s.Api) -> None:
    import kubernetes_asyncio as kubernetes

    configuration = kubernetes.client.Configuration(host=api.url)
    async with kubernetes.client.ApiClient(configuration) as client:
        core = kubernetes.client.CoreV1Api(client)
        service = await core.create_namespaced_service("default", {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
        assert service.spec.cluster_ip == "10.96.0.2"
        assert service.spec.ports[0].target_port == 80
        discovery = kubernetes.client.DiscoveryV1Api(client)
        [placeholder] = (await discovery.list_namespaced_endpoint_slice("default")).items
        assert placeholder.endpoints is None and placeholder.ports is None
        await core.create_namespaced_pod("default", {
            "metadata": {"name": "a", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
        api.set_pod_ip("default", "a", "10.0.0.11")
        [piece] = (await discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=web")).items
        assert piece.endpoints[0].addresses == ["10.0.0.11"]
        assert piece.endpoints[0].conditions.ready is True
        assert piece.ports[0].port == 80
