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
