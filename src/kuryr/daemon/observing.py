"""The node daemon's Prometheus metrics, served as ``/metrics`` beside ``/healthz`` and
``/readyz`` on ``[cni_daemon] health_address:health_port``.

Owns the metric names, labels and buckets, in a registry per daemon (so daemons in one
process, as in tests, do not collide). Not the HTTP serving (``server``).
"""

from __future__ import annotations

import prometheus_client

from kuryr.cni import protocol

# A pod's ADD takes tens to hundreds of milliseconds here; the buckets resolve that range and
# still place a request that waited for its VIF (up to [cni_daemon] vif_timeout).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            120.0)
OK = "ok"


class Metrics:
    """The daemon's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.cni_seconds = prometheus_client.Histogram(
            "kuryr_cni_request_duration_seconds",
            "CNI requests served by the daemon, by command (ADD, DEL, CHECK, STATUS, GC) and "
            "result (ok, or the CNI error code answered).",
            ["command", "result"], buckets=_BUCKETS, registry=self.registry)

    def observe_cni(self, command: str, result: str, seconds: float) -> None:
        """One answered request; ``result`` is ``OK`` or the CNI error code as text. A command
        that is not a CNI command counts as ``invalid`` (labels stay few)."""
        if command not in protocol.COMMANDS:
            command = "invalid"
        self.cni_seconds.labels(command, result).observe(seconds)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
