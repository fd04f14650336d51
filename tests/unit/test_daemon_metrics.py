"""The node daemon's Neutron call counter tells the calls a CNI request waited for (its hot
path) from those of background work the request started (a retag, a release)."""

from __future__ import annotations

import asyncio

import prometheus_client.parser

from kuryr.daemon import observing


def _calls(metrics: observing.Metrics) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in prometheus_client.parser.text_string_to_metric_families(
            metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "kuryr_neutron_calls_total":
                key = (sample.labels["operation"], sample.labels["request"])
                found[key] = found.get(key, 0) + sample.value
    return found


def test_calls_awaited_by_a_request_are_its_own_and_spawned_ones_are_background() -> None:
    metrics = observing.Metrics()

    async def call(operation: str) -> None:
        await asyncio.sleep(0.01)
        metrics.observe_neutron(operation, "ok", 0.01)

    async def gathered() -> None:
        await asyncio.gather(call("get network"), asyncio.gather(call("get subnet")))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        await call("list ports")  # before any request: background
        background: list[asyncio.Task[None]] = []
        with observing.serving("ADD"):
            await call("create port")
            background.append(loop.create_task(call("update port")))  # a retag: not waited for
            await gathered()
            await loop.create_task(call("get port"))  # an awaited task
            await asyncio.shield(loop.create_task(call("create ports")))
            await asyncio.wait_for(call("delete port"), timeout=5)
        with observing.serving("DEL"):
            await call("find network")
        await asyncio.gather(*background)

    asyncio.run(scenario())
    assert _calls(metrics) == {
        ("list ports", "background"): 1, ("create port", "ADD"): 1,
        ("get network", "ADD"): 1, ("get subnet", "ADD"): 1, ("get port", "ADD"): 1,
        ("create ports", "ADD"): 1, ("delete port", "ADD"): 1, ("find network", "DEL"): 1,
        ("update port", "background"): 1}
