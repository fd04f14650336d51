"""Health and metrics of the controller, scraped over HTTP as Prometheus and the kubelet do:
after a pod gets an ACTIVE port the pod-network-ready histogram, the Neutron call counters and
the reconcile counters have moved."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client import parser

from kuryr import model
from kuryr.ports import lifecycle
from tests.k8s.conftest import Cluster, eventually


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


async def test_health_and_metrics_move_as_a_pod_gets_its_network(
        cluster: Cluster, controller: asyncio.Task[None], binders: Any,
        make_netns: Any) -> None:
    base = f"http://127.0.0.1:{cluster.config.kubernetes.health_port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as response:
                assert response.status == 200, path

        cluster.create_namespace("obs")
        cluster.create_pod("obs", "one")
        raw = await eventually(lambda: cluster.vif("obs", "one"), what="VIF")
        vif = model.VIF.from_dict(raw)
        await lifecycle.plug_existing(cluster.neutron, binders, port_id=vif.port_id,
                                      netns=make_netns(), ifname="eth0", host=cluster.node)
        await eventually(lambda: (cluster.vif("obs", "one") or {}).get("is_active"),
                         what="VIF active")

        async with http.get(base + "/metrics") as response:
            assert response.status == 200
            samples = _samples(await response.text())

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert value("kuryr_pod_network_ready_seconds_count") == 1
    print(f"\npod network ready: {value('kuryr_pod_network_ready_seconds_sum'):.3f} s")
    assert value("kuryr_pod_network_ready_seconds_bucket", le="30.0") == 1
    assert ("kuryr_pod_network_ready_seconds_bucket", frozenset({("le", "0.1")})) in samples
    assert value("kuryr_neutron_calls_total", operation="create port", result="ok") == 1
    assert value("kuryr_neutron_calls_total", operation="create network", result="ok") == 1
    assert value("kuryr_neutron_call_seconds_count", operation="create port") == 1
    assert value("kuryr_neutron_calls_total", operation="list ports", result="ok") >= 1
    assert value("kuryr_reconciles_total", kind="pod", result="ok") >= 1
    assert value("kuryr_reconciles_total", kind="kuryrport", result="requeued") >= 1


async def test_ports_waiting_for_active_cost_one_neutron_call_per_interval(
        cluster: Cluster, controller: asyncio.Task[None], binders: Any,
        make_netns: Any) -> None:
    """Pods whose ports are not plugged yet: the controller looks at all of them in one list
    per ``port_active_poll`` (0.2 s here), never port by port, and marks each active once
    plugged."""
    base = f"http://127.0.0.1:{cluster.config.kubernetes.health_port}"

    async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as response:
            return _samples(await response.text())

    def calls(samples: dict[Any, float], operation: str) -> float:
        return samples.get(("kuryr_neutron_calls_total",
                            frozenset({("operation", operation), ("result", "ok")})), 0.0)

    cluster.create_namespace("wait")
    names = [f"p{i}" for i in range(6)]
    for name in names:
        cluster.create_pod("wait", name)
    for name in names:
        await eventually(lambda n=name: cluster.vif("wait", n), what=f"VIF of {name}")

    async def all_waiting() -> bool:
        return (await scrape()).get(("kuryr_ports_waiting_active", frozenset()), 0) == 6

    await eventually(all_waiting, what="6 ports waiting for ACTIVE", within=10)
    before = await scrape()
    await asyncio.sleep(2.0)  # ten intervals, six ports waiting
    after = await scrape()
    assert calls(after, "get port") == calls(before, "get port"), "a port polled by itself"
    lists = calls(after, "list ports") - calls(before, "list ports")
    assert 5 <= lists <= 12, f"{lists} lists of ports in 2 s at one per 0.2 s"

    for name in names:
        vif = model.VIF.from_dict(cluster.vif("wait", name) or {})
        await lifecycle.plug_existing(cluster.neutron, binders, port_id=vif.port_id,
                                      netns=make_netns(), ifname="eth0", host=cluster.node)
    for name in names:
        await eventually(lambda n=name: (cluster.vif("wait", n) or {}).get("is_active"),
                         what=f"VIF of {name} active")
    samples = await scrape()
    assert samples[("kuryr_ports_waiting_active", frozenset())] == 0
    assert samples[("kuryr_pod_network_ready_seconds_count", frozenset())] == 6
