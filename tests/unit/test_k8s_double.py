"""The Kubernetes API double behaves as the real API server does, seen over real HTTP by
aiohttp's client and by kubernetes_asyncio: discovery, object lifecycle, optimistic
concurrency, /status, patches, finalizers, garbage collection, selectors, watches, faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import k8s

PODS = "/api/v1/namespaces/default/pods"
PORTS = "/apis/openstack.org/v1/namespaces/default/kuryrports"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}


@pytest.fixture
async def api() -> AsyncIterator[k8s.Api]:
    resources = [*k8s.CORE_RESOURCES, *k8s.KURYR_RESOURCES]
    async with k8s.serve(resources=resources, bookmark_interval=0.1, log_size=50) as running:
        yield running


@pytest.fixture
async def http(api: k8s.Api) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(api.url) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any = None, *,
               expect: int = 200, **kwargs: Any) -> Any:
    async with http.request(method, path, json=body, **kwargs) as response:
        payload = await response.json()
        assert response.status == expect, payload
        return payload


async def make_pod(http: aiohttp.ClientSession, name: str, *, labels: dict[str, str] | None = None,
                   node: str | None = None, namespace: str = "default",
                   **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "labels": labels or {}, **extra},
                            "spec": {"containers": [{"name": "c", "image": "i"}]}}
    if node:
        body["spec"]["nodeName"] = node
    return await call(http, "POST", f"/api/v1/namespaces/{namespace}/pods", body, expect=201)


async def read_events(response: aiohttp.ClientResponse, count: int,
                      timeout: float = 2.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]


# -- discovery --------------------------------------------------------------------------------

async def test_discovery_describes_core_groups_and_crds(api: k8s.Api,
                                                        http: aiohttp.ClientSession) -> None:
    assert (await call(http, "GET", "/api"))["versions"] == ["v1"]
    core = await call(http, "GET", "/api/v1")
    names = {r["name"]: r for r in core["resources"]}
    assert {"pods", "pods/status", "namespaces", "nodes", "events", "configmaps", "services",
            "endpoints"} <= set(names)
    assert names["nodes"]["namespaced"] is False and names["pods"]["kind"] == "Pod"
    groups = {g["name"] for g in (await call(http, "GET", "/apis"))["groups"]}
    assert {"coordination.k8s.io", "openstack.org"} <= groups
    group = await call(http, "GET", "/apis/openstack.org")
    assert group["preferredVersion"]["groupVersion"] == "openstack.org/v1"
    crds = await call(http, "GET", "/apis/openstack.org/v1")
    assert {"kuryrports", "kuryrports/status", "kuryrnetworks"} <= {
        r["name"] for r in crds["resources"]}
    api.register(k8s.crd("example.org", "v1", "widgets", "Widget", namespaced=False))
    widgets = await call(http, "GET", "/apis/example.org/v1")
    assert widgets["resources"][0]["namespaced"] is False
    await call(http, "POST", "/apis/example.org/v1/widgets", {"metadata": {"name": "w"}},
               expect=201)
    missing = await call(http, "GET", "/apis/nothing.io/v1", expect=404)
    assert missing["kind"] == "Status" and missing["reason"] == "NotFound"


# -- create, get, list ------------------------------------------------------------------------

async def test_create_sets_server_owned_metadata(http: aiohttp.ClientSession) -> None:
    pod = await call(http, "POST", PODS, {"metadata": {"generateName": "web-", "uid": "mine"},
                                          "spec": {}}, expect=201)
    meta = pod["metadata"]
    assert meta["name"].startswith("web-") and len(meta["name"]) == len("web-") + 5
    assert meta["namespace"] == "default" and meta["uid"] != "mine"
    assert meta["generation"] == 1 and meta["resourceVersion"].isdigit()
    assert meta["creationTimestamp"].endswith("Z")
    assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
    assert await call(http, "GET", f"{PODS}/{meta['name']}") == pod


async def test_create_and_get_failures_are_status_objects(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a")
    exists = await call(http, "POST", PODS, {"metadata": {"name": "a"}}, expect=409)
    assert exists["reason"] == "AlreadyExists" and exists["code"] == 409
    missing = await call(http, "GET", f"{PODS}/nope", expect=404)
    assert missing["reason"] == "NotFound" and missing["details"]["name"] == "nope"
    await call(http, "POST", "/api/v1/namespaces/ghost/pods", {"metadata": {"name": "x"}},
               expect=404)
    mismatch = {"metadata": {"name": "x", "namespace": "kube-system"}}
    await call(http, "POST", PODS, mismatch, expect=400)
    await call(http, "POST", PODS, {"metadata": {}}, expect=422)


async def test_list_both_url_shapes_with_resource_version(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "other"}}, expect=201)
    await make_pod(http, "a")
    await make_pod(http, "b", namespace="other")
    await call(http, "POST", "/api/v1/nodes", {"metadata": {"name": "n1"}}, expect=201)
    scoped = await call(http, "GET", PODS)
    assert [p["metadata"]["name"] for p in scoped["items"]] == ["a"]
    everywhere = await call(http, "GET", "/api/v1/pods")
    assert [p["metadata"]["name"] for p in everywhere["items"]] == ["a", "b"]
    assert int(everywhere["metadata"]["resourceVersion"]) >= 2
    assert everywhere["kind"] == "PodList"
    assert (await call(http, "GET", "/api/v1/nodes/n1"))["metadata"]["name"] == "n1"
    namespace = await call(http, "GET", "/api/v1/namespaces/other")
    assert namespace["status"]["phase"] == "Active"
    await call(http, "GET", "/api/v1/namespaces/other/status")
    await call(http, "GET", "/api/v1/namespaces/default/nodes/n1", expect=404)


async def test_list_pages_with_limit_and_continue(http: aiohttp.ClientSession) -> None:
    for name in ("a", "b", "c"):
        await make_pod(http, name)
    first = await call(http, "GET", PODS, params={"limit": "2"})
    assert [p["metadata"]["name"] for p in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 1
    rest = await call(http, "GET", PODS, params={"limit": "2",
                                                 "continue": first["metadata"]["continue"]})
    assert [p["metadata"]["name"] for p in rest["items"]] == ["c"]
    assert "continue" not in rest["metadata"]


# -- updates ----------------------------------------------------------------------------------

async def test_put_conflicts_on_stale_resource_version(http: aiohttp.ClientSession) -> None:
    pod = await make_pod(http, "a")
    pod["spec"]["containers"][0]["image"] = "v2"
    updated = await call(http, "PUT", f"{PODS}/a", pod)
    assert updated["metadata"]["generation"] == 2
    stale = await call(http, "PUT", f"{PODS}/a", pod, expect=409)
    assert stale["reason"] == "Conflict"
    updated["metadata"]["labels"] = {"x": "y"}
    relabelled = await call(http, "PUT", f"{PODS}/a", updated)
    assert relabelled["metadata"]["generation"] == 2  # metadata changes keep the generation
    again = await call(http, "PUT", f"{PODS}/a", relabelled)
    assert again["metadata"]["resourceVersion"] == relabelled["metadata"]["resourceVersion"]
    del again["metadata"]["resourceVersion"]  # an unconditional update
    await call(http, "PUT", f"{PODS}/a", again)
    await call(http, "PUT", f"{PODS}/b", again, expect=400)


async def test_status_subresource_is_kept_apart(http: aiohttp.ClientSession) -> None:
    port = await call(http, "POST", PORTS, {"metadata": {"name": "p"}, "spec": {"podUid": "1"},
                                            "status": {"vifs": "ignored"}}, expect=201)
    assert "status" not in port
    port["spec"]["podUid"] = "2"
    port["status"] = {"vifs": "ignored too"}
    port = await call(http, "PUT", f"{PORTS}/p", port)
    assert "status" not in port and port["metadata"]["generation"] == 2
    port["spec"]["podUid"] = "ignored"
    port["status"] = {"vifs": {"eth0": {"active": True}}}
    port = await call(http, "PUT", f"{PORTS}/p/status", port)
    assert port["spec"]["podUid"] == "2" and port["status"]["vifs"]["eth0"]["active"] is True
    assert port["metadata"]["generation"] == 2  # status writes never bump the generation
    port = await call(http, "PATCH", f"{PORTS}/p/status",
                      {"status": {"ready": True}, "spec": {"podUid": "x"}}, headers=MERGE)
    assert port["status"] == {"vifs": {"eth0": {"active": True}}, "ready": True}
    assert port["spec"]["podUid"] == "2"
    await call(http, "GET", "/api/v1/namespaces/default/configmaps/c/status", expect=404)


async def test_patch_flavours(http: aiohttp.ClientSession) -> None:
    port = await call(http, "POST", PORTS, {"metadata": {"name": "p", "labels": {"a": "1"}},
                                            "spec": {"x": 1, "y": 2}}, expect=201)
    merged = await call(http, "PATCH", f"{PORTS}/p",
                        {"metadata": {"labels": {"a": None, "b": "2"}}, "spec": {"y": None}},
                        headers=MERGE)
    assert merged["metadata"]["labels"] == {"b": "2"} and merged["spec"] == {"x": 1}
    version = merged["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
           {"op": "add", "path": "/metadata/finalizers", "value": ["kuryr.openstack.org/x"]}]
    patched = await call(http, "PATCH", f"{PORTS}/p", ops, headers=JSON_PATCH)
    assert patched["metadata"]["finalizers"] == ["kuryr.openstack.org/x"]
    failed = await call(http, "PATCH", f"{PORTS}/p", ops, headers=JSON_PATCH, expect=422)
    assert failed["kind"] == "Status" and failed["reason"] == "Invalid"
    stale = {"metadata": {"resourceVersion": port["metadata"]["resourceVersion"]}}
    await call(http, "PATCH", f"{PORTS}/p", stale, headers=MERGE, expect=409)
    refused = await call(http, "PATCH", f"{PORTS}/p", {"spec": {}}, headers=STRATEGIC,
                         expect=415)
    assert refused["reason"] == "UnsupportedMediaType"
    await call(http, "PATCH", f"{PORTS}/p", {}, expect=415,
               headers={"Content-Type": "application/apply-patch+yaml"})


async def test_strategic_merge_merges_lists_by_key(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a", finalizers=["one"],
                   ownerReferences=[{"uid": "u1", "name": "o1", "kind": "X", "apiVersion": "v1"}])
    pod = await call(http, "PATCH", f"{PODS}/a", {"metadata": {
        "finalizers": ["two"],
        "ownerReferences": [{"uid": "u2", "name": "o2", "kind": "X", "apiVersion": "v1"}]}},
        headers=STRATEGIC)
    assert pod["metadata"]["finalizers"] == ["one", "two"]
    assert [r["uid"] for r in pod["metadata"]["ownerReferences"]] == ["u1", "u2"]
    conditions = {"status": {"conditions": [{"type": "Ready", "status": "False"},
                                            {"type": "Scheduled", "status": "True"}]}}
    await call(http, "PATCH", f"{PODS}/a/status", conditions, headers=STRATEGIC)
    pod = await call(http, "PATCH", f"{PODS}/a/status",
                     {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                     headers=STRATEGIC)
    assert pod["status"]["conditions"] == [{"type": "Ready", "status": "True"},
                                           {"type": "Scheduled", "status": "True"}]
    pod = await call(http, "PATCH", f"{PODS}/a", {"metadata": {
        "$deleteFromPrimitiveList/finalizers": ["one"],
        "ownerReferences": [{"uid": "u1", "$patch": "delete"}]}}, headers=STRATEGIC)
    assert pod["metadata"]["finalizers"] == ["two"]
    assert [r["uid"] for r in pod["metadata"]["ownerReferences"]] == ["u2"]


# -- deletion ---------------------------------------------------------------------------------

async def test_finalizers_hold_deletion_until_emptied(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", PORTS, {"metadata": {"name": "p", "finalizers": ["f"]}},
               expect=201)
    async with http.get(PORTS, params={"watch": "true"}) as watch:
        marked = await call(http, "DELETE", f"{PORTS}/p")
        assert marked["metadata"]["deletionTimestamp"]
        assert (await call(http, "GET", f"{PORTS}/p"))["metadata"]["finalizers"] == ["f"]
        await call(http, "PATCH", f"{PORTS}/p", {"metadata": {"finalizers": ["f", "g"]}},
                   headers=MERGE, expect=422)
        await call(http, "PATCH", f"{PORTS}/p", {"metadata": {"finalizers": None}},
                   headers=MERGE)
        await call(http, "GET", f"{PORTS}/p", expect=404)
        events = await read_events(watch, 4)
    assert summary(events) == [("ADDED", "p"), ("MODIFIED", "p"), ("MODIFIED", "p"),
                               ("DELETED", "p")]


async def test_delete_collection_by_label(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a", labels={"app": "x"})
    await make_pod(http, "b", labels={"app": "y"})
    deleted = await call(http, "DELETE", PODS, params={"labelSelector": "app=x"})
    assert [p["metadata"]["name"] for p in deleted["items"]] == ["a"]
    left = await call(http, "GET", PODS)
    assert [p["metadata"]["name"] for p in left["items"]] == ["b"]


async def test_owner_deletion_cascades_to_dependents(http: aiohttp.ClientSession) -> None:
    owner = await make_pod(http, "owner")
    reference = {"apiVersion": "v1", "kind": "Pod", "name": "owner",
                 "uid": owner["metadata"]["uid"]}
    for name in ("kept", "gone"):
        await call(http, "POST", PORTS, {"metadata": {"name": name,
                                                      "ownerReferences": [reference]}},
                   expect=201)
    await call(http, "DELETE", f"{PORTS}/kept", params={"propagationPolicy": "Orphan"})
    await call(http, "POST", PORTS, {"metadata": {"name": "kept"}}, expect=201)
    await call(http, "DELETE", f"{PODS}/owner")
    assert [p["metadata"]["name"] for p in (await call(http, "GET", PORTS))["items"]] == ["kept"]


async def test_pod_on_a_node_waits_for_its_kubelet(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a", node="n1")
    marked = await call(http, "DELETE", f"{PODS}/a")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    await call(http, "GET", f"{PODS}/a")
    await call(http, "DELETE", f"{PODS}/a", {"gracePeriodSeconds": 0})
    await call(http, "GET", f"{PODS}/a", expect=404)


async def test_namespace_deletion_removes_content_first(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "ns"}}, expect=201)
    await make_pod(http, "plain", namespace="ns")
    await make_pod(http, "held", namespace="ns", finalizers=["f"])
    gone = await call(http, "DELETE", "/api/v1/namespaces/ns")
    assert gone["status"]["phase"] == "Terminating"
    await call(http, "GET", "/api/v1/namespaces/ns/pods/plain", expect=404)
    refused = await call(http, "POST", "/api/v1/namespaces/ns/pods",
                         {"metadata": {"name": "late"}}, expect=403)
    assert refused["reason"] == "Forbidden"
    await call(http, "PATCH", "/api/v1/namespaces/ns/pods/held",
               {"metadata": {"finalizers": []}}, headers=MERGE)
    await call(http, "GET", "/api/v1/namespaces/ns", expect=404)


# -- selectors --------------------------------------------------------------------------------

@pytest.mark.parametrize("selector, expected", [
    ("app=web", ["a", "b"]), ("app==web", ["a", "b"]), ("app!=web", ["c", "d"]),
    ("app in (web,db)", ["a", "b", "c"]), ("app notin (web)", ["c", "d"]),
    ("tier", ["a"]), ("!tier", ["b", "c", "d"]), ("app=web,tier=front", ["a"]),
    ("app=web, !tier", ["b"]),
])
async def test_label_selectors(http: aiohttp.ClientSession, selector: str,
                               expected: list[str]) -> None:
    await make_pod(http, "a", labels={"app": "web", "tier": "front"})
    await make_pod(http, "b", labels={"app": "web"})
    await make_pod(http, "c", labels={"app": "db"})
    await make_pod(http, "d")
    found = await call(http, "GET", PODS, params={"labelSelector": selector})
    assert [p["metadata"]["name"] for p in found["items"]] == expected


async def test_field_selectors_and_bad_selectors(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a", node="n1")
    await make_pod(http, "b", node="n2")
    await make_pod(http, "c", namespace="kube-system", node="n1")

    async def names(path: str, selector: str) -> list[str]:
        found = await call(http, "GET", path, params={"fieldSelector": selector})
        return [p["metadata"]["name"] for p in found["items"]]

    assert await names("/api/v1/pods", "spec.nodeName=n1") == ["a", "c"]
    assert await names("/api/v1/pods", "spec.nodeName=n1,metadata.namespace!=default") == ["c"]
    assert await names(PODS, "metadata.name==b") == ["b"]
    refused = await call(http, "GET", PODS, params={"fieldSelector": "spec.bogus=1"},
                         expect=400)
    assert "field label not supported" in refused["message"]
    await call(http, "GET", "/api/v1/nodes", params={"fieldSelector": "spec.nodeName=n"},
               expect=400)
    await call(http, "GET", PODS, params={"labelSelector": "a in b"}, expect=400)


# -- watches ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["true", "True", "1"])
async def test_watch_starts_with_synthetic_added(http: aiohttp.ClientSession, flag: str) -> None:
    await make_pod(http, "a")
    async with http.get(PODS, params={"watch": flag}) as watch:
        assert watch.headers["Content-Type"].startswith("application/json")
        first = await read_events(watch, 1)
        await make_pod(http, "b")
        await call(http, "DELETE", f"{PODS}/a")
        rest = await read_events(watch, 2)
    assert summary(first + rest) == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert rest[1]["object"]["kind"] == "Pod"


async def test_watch_resumes_from_a_resource_version(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a")
    listed = await call(http, "GET", PODS)
    await make_pod(http, "b")
    await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"x": "1"}}}, headers=MERGE)
    version = listed["metadata"]["resourceVersion"]
    params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "0.3"}
    async with http.get(PODS, params=params) as watch:
        events = await read_events(watch, 10)
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "a")]


async def test_watch_from_a_compacted_version_is_gone(api: k8s.Api,
                                                      http: aiohttp.ClientSession) -> None:
    first = await make_pod(http, "a")
    for index in range(60):  # more than the log keeps (50)
        await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"i": str(index)}}},
                   headers=MERGE)
    params = {"watch": "1", "resourceVersion": first["metadata"]["resourceVersion"]}
    async with http.get(PODS, params=params) as watch:
        assert watch.status == 200
        [event] = await read_events(watch, 2)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    api.expire_next_watch()
    async with http.get(PODS, params={"watch": "1"}) as watch:
        assert [e["object"]["code"] for e in await read_events(watch, 2)] == [410]
    latest = (await call(http, "GET", PODS))["metadata"]["resourceVersion"]
    api.compact()
    async with http.get(PODS, params={"watch": "1", "resourceVersion": str(int(latest) - 1)}
                        ) as watch:
        assert (await read_events(watch, 1))[0]["type"] == "ERROR"


async def test_a_double_serving_gone_as_status_refuses_only_a_compacted_watch() -> None:
    async with k8s.serve(gone_as_status=True) as api, \
            aiohttp.ClientSession(api.url) as http:
        first = await make_pod(http, "a")
        await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"i": "1"}}},
                   headers=MERGE)
        latest = (await call(http, "GET", PODS))["metadata"]["resourceVersion"]
        api.compact()
        old = {"watch": "1", "resourceVersion": first["metadata"]["resourceVersion"]}
        async with http.get(PODS, params=old) as refused:
            body = await refused.json()
        assert refused.status == 410
        assert (body["kind"], body["code"], body["reason"]) == ("Status", 410, "Expired")
        api.expire_next_watch()
        async with http.get(PODS, params={"watch": "1", "resourceVersion": latest}) as forced:
            assert forced.status == 410
        fresh = {"watch": "1", "resourceVersion": latest, "timeoutSeconds": "0.3"}
        async with http.get(PODS, params=fresh) as watch:
            assert watch.status == 200
            await make_pod(http, "b")
            assert summary(await read_events(watch, 1)) == [("ADDED", "b")]


async def test_watch_bookmarks_and_timeout(http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a")
    params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "0.35"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(PODS, params=params) as watch:
        events = await read_events(watch, 100)
    assert 0.3 <= loop.time() - started < 1.5
    assert events[0]["type"] == "ADDED"
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[-1]["object"]["metadata"]["resourceVersion"].isdigit()
    async with http.get(PODS, params={"watch": "true", "timeoutSeconds": "0.2"}) as watch:
        assert [e["type"] for e in await read_events(watch, 100)] == ["ADDED"]


async def test_watch_sees_objects_enter_and_leave_a_selector(
        http: aiohttp.ClientSession) -> None:
    await make_pod(http, "a")
    params = {"watch": "true", "labelSelector": "app=web"}
    async with http.get("/api/v1/pods", params=params) as watch:
        for labels in ({"app": "web"}, {"app": "web", "v": "2"}, {"app": "db"}):
            await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": labels}},
                       headers=MERGE)
        events = await read_events(watch, 3)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[2]["object"]["metadata"]["labels"] == {"app": "db", "v": "2"}


# -- faults -----------------------------------------------------------------------------------

async def test_injected_failures_and_delays(api: k8s.Api, http: aiohttp.ClientSession) -> None:
    api.fail(PODS, status=503, times=2)
    for _ in range(2):
        failed = await call(http, "GET", PODS, expect=503)
        assert failed["kind"] == "Status"
    await call(http, "GET", PODS)
    api.delay(PODS, 0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await call(http, "GET", PODS)
    assert loop.time() - started >= 0.2
    assert ("GET", PODS) in api.requests


async def test_dropped_watches_end_or_break(api: k8s.Api, http: aiohttp.ClientSession) -> None:
    async with http.get(PODS, params={"watch": "true"}) as watch:
        await asyncio.sleep(0.05)
        assert api.drop_watches() == 1
        assert await read_events(watch, 1) == []  # a clean end of the stream
    async with http.get(PODS, params={"watch": "true"}) as watch:
        await asyncio.sleep(0.05)
        api.drop_watches(abort=True)
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_events(watch, 1)


# -- a real client: kubernetes_asyncio --------------------------------------------------------

async def test_kubernetes_asyncio_lists_watches_and_elects(api: k8s.Api) -> None:
    import kubernetes_asyncio as kubernetes
    from kubernetes_asyncio.leaderelection.resourcelock import leaselock

    configuration = kubernetes.client.Configuration(host=api.url)
    async with kubernetes.client.ApiClient(configuration) as client:
        core = kubernetes.client.CoreV1Api(client)
        await core.create_namespaced_pod("default", {"metadata": {"name": "a"}, "spec": {
            "containers": [{"name": "c", "image": "i"}]}})
        pods = await core.list_namespaced_pod("default")
        assert [p.metadata.name for p in pods.items] == ["a"]
        seen = []
        async with kubernetes.watch.Watch() as watch:
            async for event in watch.stream(core.list_namespaced_pod, "default",
                                            timeout_seconds=2):
                seen.append((event["type"], event["object"].metadata.name))
                if len(seen) == 1:
                    await core.delete_namespaced_pod("a", "default")
                else:
                    watch.stop()
                    break
            assert seen == [("ADDED", "a"), ("DELETED", "a")]
            assert int(watch.resource_version) > int(pods.metadata.resource_version)
        custom = kubernetes.client.CustomObjectsApi(client)
        await custom.create_namespaced_custom_object(
            "openstack.org", "v1", "default", "kuryrports", {"metadata": {"name": "p"}})
        # The client sends a dict as a JSON patch unless told otherwise, and is refused.
        with pytest.raises(kubernetes.client.ApiException):
            await custom.patch_namespaced_custom_object(
                "openstack.org", "v1", "default", "kuryrports", "p", {"spec": {}})
        port = await custom.patch_namespaced_custom_object(
            "openstack.org", "v1", "default", "kuryrports", "p", {"spec": {"podUid": "u"}},
            _content_type="application/merge-patch+json")
        assert port["spec"] == {"podUid": "u"}

        start = "2024-01-01 00:00:00.000000"  # str(datetime.now()), as LeaderElection
        record = kubernetes.leaderelection.leaderelectionrecord.LeaderElectionRecord(
            "one", "15", start, start)
        first = leaselock.LeaseLock("leader", "kube-system", "one", client)
        second = leaselock.LeaseLock("leader", "kube-system", "two", client)
        assert await first.create("leader", "kube-system", record)
        assert (await first.get("leader", "kube-system"))[0]
        assert (await second.get("leader", "kube-system"))[0]
        record.renew_time = "2024-01-01 00:00:05.000000"
        assert await first.update("leader", "kube-system", record)  # renews
        record.holder_identity = "two"
        assert not await second.update("leader", "kube-system", record)  # 409: stale version
        lease = await kubernetes.client.CoordinationV1Api(client).read_namespaced_lease(
            "leader", "kube-system")
        assert lease.spec.holder_identity == "one"


# -- Services: defaulting, validation, clusterIP allocation -----------------------------------

SERVICES = "/api/v1/namespaces/default/services"


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[k8s.Api, aiohttp.ClientSession]]:
    """A double with a small service CIDR: 10.96.0.0/29 leaves .2 to .6 for Services."""
    async with k8s.serve(service_cidr="10.96.0.0/29", bookmark_interval=0.1) as running, \
            aiohttp.ClientSession(running.url) as session:
        yield running, session


async def make_service(http: aiohttp.ClientSession, name: str, *, expect: int = 201,
                       **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    return await call(http, "POST", SERVICES, {"metadata": {"name": name}, "spec": spec},
                      expect=expect)


async def test_services_are_defaulted_as_kube_does(http: aiohttp.ClientSession) -> None:
    ports = [{"name": "http", "port": 80},
             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]
    service = await call(http, "POST", SERVICES, {
        "metadata": {"name": "plain"}, "spec": {"ports": ports},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}, expect=201)
    spec = service["spec"]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                             {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]
    assert spec["internalTrafficPolicy"] == "Cluster" and "externalTrafficPolicy" not in spec
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert "clusterIP" not in spec  # no service_cidr: nothing is allocated
    assert service["status"] == {"loadBalancer": {}}
    sticky = await make_service(http, "sticky", type="LoadBalancer", sessionAffinity="ClientIP")
    assert sticky["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert sticky["spec"]["externalTrafficPolicy"] == "Cluster"
    updated = await call(http, "PATCH", f"{SERVICES}/sticky",
                         {"spec": {"sessionAffinity": "None"}}, headers=MERGE)
    assert "sessionAffinityConfig" not in updated["spec"]


async def test_service_validation_is_kube_worded(http: aiohttp.ClientSession) -> None:
    cases = [
        ({"ports": []}, "spec.ports: Required value"),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port: Invalid value: 0: must be between"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]},
         'spec.ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP"'),
        ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
         'spec.ports[1].name: Duplicate value: "a"'),
        ({"ports": [{"port": 80, "targetPort": "8080"}]}, "must contain at least one letter"),
        ({"type": "Magic"}, 'spec.type: Unsupported value: "Magic"'),
        ({"type": "ExternalName", "ports": []}, "spec.externalName: Required value"),
        ({"type": "ExternalName", "externalName": "x.example", "clusterIP": "10.0.0.1"},
         "spec.clusterIPs: Forbidden: may not be set for ExternalName services"),
        ({"clusterIP": "nonsense"}, 'spec.clusterIPs[0]: Invalid value: "nonsense": must be a '
                                    "valid IP address"),
    ]
    for spec, message in cases:
        refused = await make_service(http, "bad", expect=422, **spec)
        assert refused["reason"] == "Invalid" and refused["code"] == 422
        assert refused["message"].startswith('Service "bad" is invalid: ')
        assert message in refused["message"], (spec, refused["message"])
    headless = await make_service(http, "headless", clusterIP="None", ports=[])
    assert headless["spec"]["clusterIPs"] == ["None"]
    assert headless["spec"]["ipFamilyPolicy"] == "RequireDualStack"  # no selector
    name = await make_service(http, "external", type="ExternalName", externalName="x.example",
                              ports=[])
    assert "clusterIP" not in name["spec"] and "ipFamilies" not in name["spec"]


async def test_cluster_ips_are_allocated_from_the_cidr(
        cluster: tuple[k8s.Api, aiohttp.ClientSession]) -> None:
    api, http = cluster
    first = await make_service(http, "first")
    assert first["spec"]["clusterIP"] == "10.96.0.2"  # not .0, not .1 (kubernetes')
    assert first["spec"]["clusterIPs"] == ["10.96.0.2"]
    chosen = await make_service(http, "chosen", clusterIP="10.96.0.4")
    assert chosen["spec"]["clusterIPs"] == ["10.96.0.4"]
    assert (await make_service(http, "second"))["spec"]["clusterIP"] == "10.96.0.3"
    taken = await make_service(http, "taken", clusterIP="10.96.0.4", expect=422)
    assert taken["message"] == ('Service "taken" is invalid: spec.clusterIPs: Invalid value: '
                                '[]string{"10.96.0.4"}: failed to allocate IP 10.96.0.4: '
                                "provided IP is already allocated")
    assert taken["details"]["causes"][0]["field"] == "spec.clusterIPs"
    for outside in ("10.96.1.9", "10.96.0.0", "10.96.0.7"):
        refused = await make_service(http, "outside", clusterIP=outside, expect=422)
        assert "is not in the valid range. The range of valid IPs is 10.96.0.0/29" in \
            refused["message"]
    headless = await make_service(http, "headless", clusterIP="None", selector={"a": "b"})
    assert headless["spec"]["clusterIPs"] == ["None"]
    assert headless["spec"]["ipFamilyPolicy"] == "SingleStack"
    # The kubernetes Service's address can be asked for, as kube-apiserver itself does.
    assert (await make_service(http, "kubernetes", clusterIP="10.96.0.1"))["spec"][
        "clusterIP"] == "10.96.0.1"
    assert (await make_service(http, "last"))["spec"]["clusterIP"] == "10.96.0.5"
    assert (await make_service(http, "fifth"))["spec"]["clusterIP"] == "10.96.0.6"
    full = await make_service(http, "full", expect=500)
    assert "range is full" in full["message"]
    # Deleting frees the address, but only once the Service is really gone.
    await call(http, "PATCH", f"{SERVICES}/first", {"metadata": {"finalizers": ["f"]}},
               headers=MERGE)
    await call(http, "DELETE", f"{SERVICES}/first")
    await make_service(http, "again", expect=500)
    await call(http, "PATCH", f"{SERVICES}/first", {"metadata": {"finalizers": None}},
               headers=MERGE)
    assert (await make_service(http, "again"))["spec"]["clusterIP"] == "10.96.0.2"
    # Straight to the store, as fixtures write: the same admission.
    api.store.delete(k8s.SERVICES, "default", "again")
    direct = api.store.create(k8s.SERVICES, "default", {"metadata": {"name": "direct"},
                                                        "spec": {"ports": [{"port": 1}]}})
    assert direct["spec"]["clusterIP"] == "10.96.0.2"


async def test_an_allocated_cluster_ip_cannot_change(
        cluster: tuple[k8s.Api, aiohttp.ClientSession]) -> None:
    _, http = cluster
    service = await make_service(http, "web")
    path = f"{SERVICES}/web"
    # A PUT that leaves the clusterIP out keeps it (kube's patchAllocatedValues).
    service["spec"].pop("clusterIP")
    service["spec"].pop("clusterIPs")
    service["spec"]["ports"][0]["port"] = 8080
    kept = await call(http, "PUT", path, service)
    assert kept["spec"]["clusterIP"] == "10.96.0.2" and kept["spec"]["ports"][0]["port"] == 8080
    changed = await call(http, "PATCH", path, {"spec": {"clusterIP": "10.96.0.3",
                                                        "clusterIPs": ["10.96.0.3"]}},
                         headers=MERGE, expect=422)
    assert changed["message"] == ('Service "web" is invalid: spec.clusterIPs[0]: Invalid value: '
                                  '[]string{"10.96.0.3"}: may not change once set')
    await call(http, "PATCH", path, {"spec": {"clusterIP": "None", "clusterIPs": None}},
               headers=MERGE, expect=422)
    # Becoming ExternalName drops the address (and frees it); coming back allocates anew.
    external = await call(http, "PATCH", path, {"spec": {"type": "ExternalName",
                                                         "externalName": "x.example"}},
                          headers=MERGE)
    assert "clusterIP" not in external["spec"] and "clusterIPs" not in external["spec"]
    assert (await make_service(http, "other"))["spec"]["clusterIP"] == "10.96.0.2"
    back = await call(http, "PATCH", path, {"spec": {"type": "ClusterIP", "externalName": None}},
                      headers=MERGE)
    assert back["spec"]["clusterIP"] == "10.96.0.3"


async def test_service_status_is_written_apart(
        cluster: tuple[k8s.Api, aiohttp.ClientSession]) -> None:
    _, http = cluster
    await make_service(http, "lb", type="LoadBalancer")
    ingress = {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.20"}]}},
               "spec": {"type": "ClusterIP"}}
    written = await call(http, "PATCH", f"{SERVICES}/lb/status", ingress, headers=MERGE)
    assert written["spec"]["type"] == "LoadBalancer"
    # LoadBalancerIPMode (on by default since 1.30): the server adds ipMode.
    assert written["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.20",
                                                             "ipMode": "VIP"}]
    again = await call(http, "PATCH", f"{SERVICES}/lb/status", ingress, headers=MERGE)
    assert again["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]


# -- the kubelet's part: a pod gets its IP ----------------------------------------------------

async def test_set_pod_ip_writes_status_as_the_kubelet(api: k8s.Api,
                                                       http: aiohttp.ClientSession) -> None:
    pod = await make_pod(http, "a", node="n1")
    async with http.get(PODS, params={"watch": "true", "resourceVersion":
                                      pod["metadata"]["resourceVersion"]}) as watch:
        started = api.set_pod_ip("default", "a", "10.0.0.7", ready=False)
        ready = api.set_pod_ip("default", "a", "10.0.0.7")
        events = await read_events(watch, 2)
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED"]
    assert events[1]["object"] == ready
    status = ready["status"]
    assert status["phase"] == "Running" and status["podIP"] == "10.0.0.7"
    assert status["podIPs"] == [{"ip": "10.0.0.7"}]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["ContainersReady"]["status"] == "True"
    assert {c["type"]: c["status"] for c in started["status"]["conditions"]} == {
        "ContainersReady": "False", "Ready": "False"}
    assert int(ready["metadata"]["resourceVersion"]) > int(started["metadata"]["resourceVersion"])
    assert ready["metadata"]["generation"] == pod["metadata"]["generation"]
    same = api.set_pod_ip("default", "a", "10.0.0.7")
    assert same["metadata"]["resourceVersion"] == ready["metadata"]["resourceVersion"]
    with pytest.raises(k8s.errors.ApiError):
        api.set_pod_ip("default", "ghost", "10.0.0.8")
