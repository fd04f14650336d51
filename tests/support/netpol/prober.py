"""Real connections between pods in network namespaces, hundreds at once, into a truth table.

``Prober.start`` runs ONE agent (``tests.support.netpol.agent``) per pod, inside the pod's
network namespace: it serves TCP and UDP on the given ports and takes probe commands on its
stdin, so a probe costs a socket in the source pod's agent, not a process. ``probe_all``
probes every (source, destination, port, protocol) concurrently (at most ``concurrency``
probes in flight per source pod) into a ``matrix.Matrix``; ``close`` kills every agent it
started, whatever happened before.

How a probe is judged (each attempt sends a fresh nonce from a fresh socket):

- allowed: the destination's agent answered, naming itself and echoing the nonce. A reply
  from anyone else, or without the nonce, is not taken as allowed.
- denied: every attempt ended in a clean drop or refusal: no TCP handshake (or no UDP reply)
  within ``timeout``, a TCP reset, an ICMP unreachable. A failed attempt is tried again
  (``retries``, default one more) before it is believed, so one lost SYN or datagram is a
  flake, not a denial.
- unknown (recorded as such in the matrix, always a mismatch in ``matrix.diff``): the
  handshake completed but no answer came (the path was open: a slow server is not a drop), a
  wrong answer, an agent error, or attempts that disagree (a drop, then an open path).

Probing a port an agent does not serve is refused up front (a refused connection to it would
look like a denial), and a dead agent fails the run instead of reading as drops.

It owns the agents' processes and the judging; which traffic is expected is ``model``'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from tests.support.netpol import matrix

ROOT = str(pathlib.Path(__file__).resolve().parents[3])
DENIED_OUTCOMES = frozenset({"timeout", "refused", "unreachable"})
PROTOCOLS = ("TCP", "UDP")


class ProbeError(Exception):
    """An agent could not start or died: no probe result could be trusted."""


class PodLike(Protocol):
    """What the prober needs of a pod (``tests.k8s.backends.Pod`` is one)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def netns(self) -> str: ...
    @property
    def ip(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One probed party: its name in matrices, its network namespace, the address probed."""

    key: str
    netns: str
    ip: str


def endpoint(pod: Endpoint | PodLike) -> Endpoint:
    """The endpoint of a pod (keyed ``namespace/name``) or an endpoint as it is."""
    if isinstance(pod, Endpoint):
        return pod
    return Endpoint(f"{pod.namespace}/{pod.name}", pod.netns, pod.ip)


@dataclasses.dataclass(frozen=True)
class Attempt:
    outcome: str  # the agent's: answered, timeout, refused, unreachable, no-reply, error
    answer: str
    elapsed: float


@dataclasses.dataclass(frozen=True)
class Result:
    """One probe: its verdict (``None``: unknown) and every attempt it took."""

    src: str
    dst: str
    port: int
    protocol: str
    connected: bool | None
    attempts: tuple[Attempt, ...]

    @property
    def note(self) -> str:
        said = ", ".join(a.outcome + (f" ({a.answer})" if a.outcome != "answered"
                                      and a.answer else "") for a in self.attempts)
        return said if len(self.attempts) > 1 or self.connected is not True else ""


@dataclasses.dataclass(frozen=True)
class RunStats:
    probes: int
    retried: int
    seconds: float


@dataclasses.dataclass
class _Agent:
    endpoint: Endpoint
    process: asyncio.subprocess.Process
    serves: frozenset[tuple[int, str]]
    slots: asyncio.Semaphore
    pending: dict[int, asyncio.Future[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    stderr: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=20))
    ready: asyncio.Future[dict[str, Any]] | None = None
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def describe(self) -> str:
        tail = " | ".join(self.stderr)
        return (f"agent of {self.endpoint.key} (pid {self.process.pid}, netns "
                f"{self.endpoint.netns}, exit {self.process.returncode})"
                + (f": {tail}" if tail else ""))


class Prober:
    """Agents in pods' network namespaces, probing each other.

    ``timeout``: seconds a TCP handshake (and then the answer) or a UDP reply may take;
    ``retries``: further attempts of a probe that did not connect; ``concurrency``: probes in
    flight at once per source pod; ``tcp_ports``/``udp_ports``: what every agent serves.
    """

    def __init__(self, *, timeout: float = 1.0, retries: int = 1, concurrency: int = 64,
                 tcp_ports: Iterable[int] = (80, 81), udp_ports: Iterable[int] = (80, 81),
                 start_timeout: float = 20.0) -> None:
        self.timeout = timeout
        self.retries = retries
        self.concurrency = concurrency
        self.tcp_ports = tuple(tcp_ports)
        self.udp_ports = tuple(udp_ports)
        self.start_timeout = start_timeout
        self.agents: dict[str, _Agent] = {}
        self.last_run: RunStats | None = None
        self._ids = itertools.count()
        self._run_id = secrets.token_hex(3)

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, pods: Iterable[Endpoint | PodLike]) -> None:
        """Start one agent per pod and wait until each serves. Raises ``ValueError`` for a
        pod named twice, ``ProbeError`` if an agent does not come up (every agent started
        is then killed)."""
        endpoints = [endpoint(p) for p in pods]
        keys = [e.key for e in endpoints] + list(self.agents)
        if len(set(keys)) != len(keys):
            raise ValueError(f"pods named twice among {keys}")
        try:
            done = await asyncio.gather(*(self._start_one(e) for e in endpoints),
                                        return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            await self.close()
            raise

    async def _start_one(self, where: Endpoint) -> None:
        process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", where.netns, sys.executable, "-m",
            "tests.support.netpol.agent", where.key, ",".join(map(str, self.tcp_ports)),
            ",".join(map(str, self.udp_ports)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": ROOT})
        serves = frozenset({(p, "TCP") for p in self.tcp_ports}
                           | {(p, "UDP") for p in self.udp_ports})
        agent = _Agent(where, process, serves, asyncio.Semaphore(self.concurrency))
        # Registered before anything is awaited: close() kills it whatever happens next.
        self.agents[where.key] = agent
        agent.ready = asyncio.get_running_loop().create_future()
        agent.tasks = [asyncio.create_task(self._read(agent)),
                       asyncio.create_task(self._read_stderr(agent))]
        try:
            said = await asyncio.wait_for(asyncio.shield(agent.ready),
                                          timeout=self.start_timeout)
        except TimeoutError:
            raise ProbeError(f"{agent.describe()} not ready in {self.start_timeout} s"
                             ) from None
        if not said.get("ready"):
            raise ProbeError(f"{agent.describe()}: {said.get('error')}")

    async def _read(self, agent: _Agent) -> None:
        assert agent.process.stdout is not None
        while line := await agent.process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                agent.stderr.append(f"stdout: {line[:200]!r}")
                continue
            if "ready" in message:
                if agent.ready is not None and not agent.ready.done():
                    agent.ready.set_result(message)
                continue
            waiter = agent.pending.pop(message.get("id"), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        await agent.process.wait()
        gone = ProbeError(f"{agent.describe()} ended")
        if agent.ready is not None and not agent.ready.done():
            agent.ready.set_result({"ready": False, "error": "ended before it was ready"})
        for waiter in agent.pending.values():
            if not waiter.done():
                waiter.set_exception(gone)
        agent.pending.clear()

    @staticmethod
    async def _read_stderr(agent: _Agent) -> None:
        assert agent.process.stderr is not None
        while line := await agent.process.stderr.readline():
            agent.stderr.append(line.decode(errors="replace").rstrip())

    def _agent(self, pod: str | Endpoint | PodLike) -> _Agent:
        found = self.agents.get(pod if isinstance(pod, str) else endpoint(pod).key)
        if found is None:
            raise KeyError(f"no agent for {pod}: start() it first")
        return found

    async def probe_address(self, src: str | Endpoint | PodLike, host: str, port: int,
                            protocol: str = "TCP") -> str | None:
        """One attempt from ``src``'s namespace to any address (a Service's VIP): the key of
        the agent that answered, or None when nothing did."""
        source = self._agent(src)
        async with source.slots:
            attempt = await self._attempt(source, None, port, protocol, host=host)
        if attempt.outcome != "answered":
            return None
        key, _, nonce = attempt.answer.rpartition(" ")
        return key if nonce.startswith(self._run_id) else None

    async def _attempt(self, src: _Agent, dst: _Agent | None, port: int, protocol: str, *,
                       host: str | None = None) -> Attempt:
        probe_id = next(self._ids)
        nonce = f"{self._run_id}-{probe_id}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        src.pending[probe_id] = waiter
        host = host or (dst.endpoint.ip if dst is not None else "")
        command = {"id": probe_id, "host": host, "port": port,
                   "protocol": protocol.lower(), "timeout": self.timeout, "nonce": nonce}
        if src.process.returncode is not None or src.process.stdin is None:
            raise ProbeError(f"{src.describe()} is not running")
        async with src.lock:
            src.process.stdin.write((json.dumps(command) + "\n").encode())
            await src.process.stdin.drain()
        try:
            # The agent answers within two timeouts (handshake, then answer); more is a
            # stuck agent, not a verdict about the network.
            said = await asyncio.wait_for(waiter, timeout=2 * self.timeout + 10)
        except TimeoutError:
            src.pending.pop(probe_id, None)
            return Attempt("error", "the agent gave no result", 2 * self.timeout + 10)
        outcome, answer = str(said.get("outcome")), str(said.get("answer") or "")
        if outcome == "answered" and dst is not None and answer != f"{dst.endpoint.key} {nonce}":
            outcome = "wrong-answer"
        return Attempt(outcome, answer, float(said.get("elapsed") or 0.0))

    async def probe(self, src: str | Endpoint | PodLike, dst: str | Endpoint | PodLike,
                    port: int, protocol: str = "TCP") -> Result:
        """One probe from ``src``'s namespace to ``dst``'s address, retried as the class
        says. Raises ``KeyError`` for a pod without an agent, ``ValueError`` for a port
        ``dst``'s agent does not serve, ``ProbeError`` if an agent died."""
        source, destination = self._agent(src), self._agent(dst)
        if (port, protocol) not in destination.serves:
            raise ValueError(f"{destination.endpoint.key} serves no {protocol}/{port}")
        attempts: list[Attempt] = []
        async with source.slots:
            for _ in range(1 + self.retries):
                attempt = await self._attempt(source, destination, port, protocol)
                attempts.append(attempt)
                if attempt.outcome == "answered":
                    break
        return Result(source.endpoint.key, destination.endpoint.key, port, protocol,
                      _verdict(attempts), tuple(attempts))

    async def probe_all(self, pairs: Iterable[tuple[Any, Any]] | None = None,
                        ports: Sequence[int] = (80, 81),
                        protocols: Sequence[str] = PROTOCOLS) -> matrix.Matrix:
        """Probe every pair (default: every ordered pair of started pods, each pod with
        itself included) on every port x protocol, all at once, into a matrix whose rows and
        columns are the pairs' sources and destinations in order of appearance (cells of a
        partial list of pairs are left unset). Raises as ``probe`` does, before any probe
        runs for a bad port."""
        if pairs is None:
            chosen = list(itertools.product(self.agents, repeat=2))
        else:
            chosen = [(self._agent(s).endpoint.key, self._agent(d).endpoint.key)
                      for s, d in pairs]
        cases = [(port, protocol) for port in ports for protocol in protocols]
        for _, dst in chosen:
            missing = [c for c in cases if c not in self.agents[dst].serves]
            if missing:
                raise ValueError(f"{dst} serves no {missing}")
        froms = list(dict.fromkeys(s for s, _ in chosen))
        tos = list(dict.fromkeys(d for _, d in chosen))
        found = matrix.Matrix(tuple(froms), tuple(tos), tuple(cases))
        started = time.monotonic()
        results = await asyncio.gather(*(self.probe(s, d, port, protocol)
                                         for s, d in chosen for port, protocol in cases))
        dead = [a.describe() for a in self.agents.values() if a.process.returncode is not None]
        if dead:
            raise ProbeError("agents died during the run: " + "; ".join(dead))
        for r in results:
            found.set(r.src, r.dst, r.port, r.protocol, r.connected, note=r.note)
        self.last_run = RunStats(probes=len(results),
                                 retried=sum(1 for r in results if len(r.attempts) > 1),
                                 seconds=time.monotonic() - started)
        return found

    async def forget(self, keys: Iterable[str]) -> None:
        """Kill the agents of these pods (gone from the test) and wait for each."""
        chosen = [self.agents.pop(k) for k in list(keys) if k in self.agents]
        await self._kill(chosen)

    async def close(self) -> None:
        """Kill every agent this prober started and wait for each; safe to call again."""
        agents, self.agents = list(self.agents.values()), {}
        await self._kill(agents)

    @staticmethod
    async def _kill(agents: list[_Agent]) -> None:
        for agent in agents:
            if agent.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    agent.process.kill()
        for agent in agents:
            with contextlib.suppress(ProcessLookupError):
                await agent.process.wait()
            for task in agent.tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*agent.tasks, return_exceptions=True)
            if agent.process.stdin is not None:
                agent.process.stdin.close()


def _verdict(attempts: Sequence[Attempt]) -> bool | None:
    """Allowed if an attempt got the destination's answer (and none anybody else's); denied
    if every attempt was a clean drop or refusal; unknown otherwise."""
    if any(a.outcome == "wrong-answer" for a in attempts):
        return None
    if any(a.outcome == "answered" for a in attempts):
        return True
    if all(a.outcome in DENIED_OUTCOMES for a in attempts):
        return False
    return None
