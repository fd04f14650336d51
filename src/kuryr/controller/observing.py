"""The controller's health and Prometheus metrics, served over HTTP on ``[kubernetes]
health_host:health_port`` (127.0.0.1 by default): ``/healthz`` (liveness: the event loop
answers), ``/readyz`` (readiness: leading with every informer synced, or following with the
API answering) and ``/metrics``.

Owns the metric names and buckets, in a registry per controller run (so runs in one process,
as in tests, do not collide). Neutron calls are counted through the observer the Neutron
facade calls (``kuryr.neutron.operations``): the facade itself knows nothing of Prometheus.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import prometheus_client
from aiohttp import web

from kuryr import errors

LOG = logging.getLogger(__name__)
# Pods get their network in well under a second here: the buckets resolve that range.
_FAST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The controller's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.pod_network_ready = prometheus_client.Histogram(
            "kuryr_pod_network_ready_seconds",
            "From the controller seeing a pod to its KuryrPort VIF written active.",
            buckets=_FAST_BUCKETS, registry=self.registry)
        self.neutron_calls = prometheus_client.Counter(
            "kuryr_neutron_calls", "Neutron API calls by operation and result.",
            ["operation", "result"], registry=self.registry)
        self.neutron_seconds = prometheus_client.Histogram(
            "kuryr_neutron_call_seconds", "Neutron API call latency by operation.",
            ["operation"], buckets=_FAST_BUCKETS, registry=self.registry)
        self.reconciles = prometheus_client.Counter(
            "kuryr_reconciles", "Handler runs by object kind and result (ok, requeued, "
            "TemporaryError, PermanentError, ...).", ["kind", "result"], registry=self.registry)
        self.is_leader = prometheus_client.Gauge(
            "kuryr_controller_is_leader", "1 while this controller holds the Lease.",
            registry=self.registry)
        self.pool_takes = prometheus_client.Counter(
            "kuryr_pool_takes", "Ports wanted from a node's pool: hit (one was ready) or miss "
            "(a port was created instead).", ["result"], registry=self.registry)
        self.pool_ready = prometheus_client.Gauge(
            "kuryr_pool_ready_ports", "Ports ready in the nodes' pools.", registry=self.registry)
        self.ports_waiting_active = prometheus_client.Gauge(
            "kuryr_ports_waiting_active", "Pods' ports plugged or about to be, that Neutron has "
            "not marked ACTIVE yet.", registry=self.registry)
        self.gc_runs = prometheus_client.Counter(
            "kuryr_gc_runs", "Periodic garbage collections by result (ok, failed: some orphan "
            "could not be removed, or an error class name).", ["result"], registry=self.registry)
        self.gc_removed = prometheus_client.Counter(
            "kuryr_gc_removed", "Orphaned Neutron resources removed by the periodic garbage "
            "collection, by kind (port, network, loadbalancer, floatingip).", ["kind"],
            registry=self.registry)

        self.service_ready = prometheus_client.Histogram(
            "kuryr_service_lb_ready_seconds",
            "From the controller seeing a Service (or a change of it or its endpoints) to its "
            "Octavia load balancer ACTIVE with every listener, pool and member applied.",
            buckets=_FAST_BUCKETS, registry=self.registry)
        self.octavia_calls = prometheus_client.Counter(
            "kuryr_octavia_calls", "Octavia API calls by operation and result.",
            ["operation", "result"], registry=self.registry)
        self.octavia_seconds = prometheus_client.Histogram(
            "kuryr_octavia_call_seconds", "Octavia API call latency by operation.",
            ["operation"], buckets=_FAST_BUCKETS, registry=self.registry)

    def observe_octavia(self, operation: str, result: str, seconds: float) -> None:
        """The Octavia facade's observer."""
        self.octavia_calls.labels(operation, result).inc()
        self.octavia_seconds.labels(operation).observe(seconds)

    def observe_neutron(self, operation: str, result: str, seconds: float) -> None:
        """The Neutron facade's observer (``kuryr.neutron.operations.Observer``)."""
        self.neutron_calls.labels(operation, result).inc()
        self.neutron_seconds.labels(operation).observe(seconds)

    def observe_reconcile(self, kind: str, result: str) -> None:
        self.reconciles.labels(kind, result).inc()

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


@contextlib.asynccontextmanager
async def serving(metrics: Metrics, *, host: str, port: int,
                  is_ready: Callable[[], bool]) -> AsyncIterator[None]:
    """Serve health and metrics for the duration of the block. Raises ConfigError when the
    address cannot be bound."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready\n")

    async def render(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", render)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise errors.ConfigError(f"cannot serve health and metrics on {host}:{port}: {e}") from e
    LOG.info("health and metrics on http://%s:%d/", host, port)
    try:
        yield
    finally:
        await runner.cleanup()
