"""The node daemon's Prometheus metrics, served as ``/metrics`` beside ``/healthz`` and
``/readyz`` on ``[cni_daemon] health_address:health_port``.

Owns the metric names, labels and buckets, in a registry per daemon (so daemons in one
process, as in tests, do not collide), and which CNI request a Neutron call was made for: the
request's task and the tasks it waits for (awaited, gathered, shielded) make calls on its hot
path, any other task (a background retag, release or pool refill) makes them off it. Not the HTTP
serving (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import prometheus_client

from kuryr.cni import protocol

# A pod's ADD takes tens to hundreds of milliseconds here; the buckets resolve that range and
# still place a request that waited for its VIF (up to [cni_daemon] vif_timeout).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            120.0)
_NEUTRON_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
OK = "ok"
BACKGROUND = "background"
_UNKNOWN = object()
# The CNI command being served and the task serving it; tasks started meanwhile inherit it
# (asyncio copies the context), so whether a call is the request's own is decided by awaiting.
_REQUEST: contextvars.ContextVar[tuple[str, asyncio.Task[object]] | None] = \
    contextvars.ContextVar("kuryr_cni_request", default=None)


class Metrics:
    """The daemon's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.cni_seconds = prometheus_client.Histogram(
            "kuryr_cni_request_duration_seconds",
            "CNI requests served by the daemon, by command (ADD, DEL, CHECK, STATUS, GC) and "
            "result (ok, or the CNI error code answered).",
            ["command", "result"], buckets=_BUCKETS, registry=self.registry)
        self.neutron_calls = prometheus_client.Counter(
            "kuryr_neutron_calls",
            "Neutron API calls by operation, result and request: the CNI command whose answer "
            "waited for the call (its hot path), or background (retags, releases, pool "
            "refills).", ["operation", "result", "request"], registry=self.registry)
        self.neutron_seconds = prometheus_client.Histogram(
            "kuryr_neutron_call_seconds", "Neutron API call latency by operation.",
            ["operation"], buckets=_NEUTRON_BUCKETS, registry=self.registry)

    def observe_cni(self, command: str, result: str, seconds: float) -> None:
        """One answered request; ``result`` is ``OK`` or the CNI error code as text. A command
        that is not a CNI command counts as ``invalid`` (labels stay few)."""
        self.cni_seconds.labels(_command(command), result).observe(seconds)

    def observe_neutron(self, operation: str, result: str, seconds: float) -> None:
        """The Neutron facade's observer (``kuryr.neutron.operations.Observer``); called in
        the task that made the call."""
        self.neutron_calls.labels(operation, result, current_request()).inc()
        self.neutron_seconds.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


@contextlib.contextmanager
def serving(command: str) -> Iterator[None]:
    """Mark the running task as serving CNI ``command`` for the duration of the block."""
    task = asyncio.current_task()
    token = _REQUEST.set((_command(command), task) if task is not None else None)
    try:
        yield
    finally:
        _REQUEST.reset(token)


def current_request() -> str:
    """The CNI command whose request waits for the running task, or ``BACKGROUND``."""
    serving_now = _REQUEST.get()
    task = asyncio.current_task()
    if serving_now is None or task is None:
        return BACKGROUND
    command, request_task = serving_now
    return command if _awaits(request_task, task) else BACKGROUND


def _awaits(root: asyncio.Task[object], task: asyncio.Task[object]) -> bool:
    """Whether ``root`` waits for ``task``: ``task`` is ``root``, or finishing it wakes a
    future that leads there, through an ``await``, ``asyncio.gather``, ``shield`` or
    ``wait_for``. Those links are only in the done callbacks of futures (CPython's private
    ``_callbacks``, each a bound method of the waiting task or a closure or partial holding
    the next future); where they cannot be read, every task of a request counts as its own
    (more calls on the hot path, never fewer)."""
    stack: list[object] = [task]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if node is root:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        callbacks: Any = getattr(node, "_callbacks", _UNKNOWN)
        if callbacks is _UNKNOWN:
            return True
        for entry in callbacks or ():
            stack.extend(_futures_of(entry[0] if isinstance(entry, tuple) else entry))
    return False


def _futures_of(callback: object) -> list[asyncio.Future[object]]:
    """The futures a done callback wakes: its owner, a partial's arguments, a closure's
    cells."""
    held: list[object] = [getattr(callback, "__self__", None)]
    if isinstance(callback, functools.partial):
        held += [*callback.args, *callback.keywords.values()]
    for cell in getattr(callback, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            held.append(cell.cell_contents)
    return [h for h in held if isinstance(h, asyncio.Future)]


def _command(command: str) -> str:
    return command if command in protocol.COMMANDS else "invalid"
