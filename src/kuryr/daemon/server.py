"""The daemon's HTTP side: CNI requests from the ``kuryr`` executable on a root-only unix socket
(``POST /v1/cni``), liveness, readiness and metrics on a loopback TCP port (``/healthz``,
``/readyz``, ``/metrics``), and the start-up and shutdown of everything the daemon owns: the
binders, and per ``[cni_daemon] mode`` either the Neutron client and pool (``standalone``) or
the Kubernetes client (``kubernetes``: no Neutron client is ever made).

Owns the wire between shim and daemon: the request body is ``{"env": {CNI_*}, "config": {..}}``;
the answer is HTTP 200 with the CNI result (or nothing), or an error status with a CNI error
object written in the configuration's ``cniVersion``. What a request does is the mode's
(``standalone``, ``kubernetes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Any, Protocol

import prometheus_client
from aiohttp import web

from kuryr import binding, errors, settings
from kuryr.cni import codes, protocol, results
from kuryr.daemon import kubernetes, locking, observing, standalone
from kuryr.k8s import api
from kuryr.neutron import client
from kuryr.pools import warm

LOG = logging.getLogger(__name__)
FALLBACK_VERSION = "1.0.0"  # for errors about a configuration whose version is unknown


def error_response(error: codes.CniError, version: str) -> web.Response:
    if error.code == codes.TRY_AGAIN_LATER:
        status = 503
    elif error.code < codes.TRY_AGAIN_LATER:
        status = 400
    else:
        status = 500
    return web.json_response(error.to_wire(version), status=status)


class Handler(Protocol):
    """What serves requests in one mode. Each method raises CniError or a KuryrError."""

    needs_network: bool  # whether the CNI configuration must name a Neutron network
    config: settings.CniDaemonSettings
    locks: locking.KeyedLocks  # per container ID; the mode's GC takes them too

    async def add(self, request: protocol.Request) -> results.Result: ...

    async def delete(self, request: protocol.Request) -> None: ...

    async def check(self, request: protocol.Request) -> None: ...

    async def gc(self, conf: protocol.NetConf) -> list[str]: ...

    async def status(self, conf: protocol.NetConf | None = None) -> None:
        """Raises CniError 50 or 51 when not ready."""

    async def close(self) -> None: ...


async def dispatch(handler: Handler, request: protocol.Request) -> results.Result | None:
    """Run one request in ``handler``'s mode; ADD returns its result. ADD, DEL and CHECK of
    one container run one at a time."""
    if request.command == "STATUS":
        await handler.status(request.config)
        return None
    if request.command == "GC":
        await handler.gc(request.config)
        return None
    async with handler.locks.hold(request.container_id, timeout=handler.config.lock_timeout):
        if request.command == "ADD":
            return await handler.add(request)
        if request.command == "DEL":
            await handler.delete(request)
        elif request.command == "CHECK":
            await handler.check(request)
    return None


class Daemon:
    """One node daemon: wire its parts from settings, serve until ``stop``."""

    def __init__(self, config: settings.KuryrSettings) -> None:
        self.config = config
        self.neutron: client.Neutron | None = None
        self.kube: api.Kube | None = None
        self.binders: dict[str, binding.Binder] = {}
        self.pool: warm.PortPool | None = None
        self.handler: Handler | None = None
        self.metrics = observing.Metrics()
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        """Connect, rebuild the pool (standalone), listen. Raises ConfigError (another daemon
        listening, bad settings), KuryrError."""
        cfg = self.config.cni_daemon
        self.binders = binding.binders(self.config.binding)
        host = self.config.binding.host
        if cfg.mode == "kubernetes":
            if cfg.pool_enabled:
                LOG.warning("[cni_daemon] pool_enabled is ignored in kubernetes mode: the "
                            "controller makes the pods' ports")
            self.kube = await api.connect(self.config.kubernetes)
            mode = kubernetes.KubernetesMode(self.kube, self.binders, config=self.config)
            mode.start()
            self.handler = mode
        else:
            await self._start_standalone()
        cni_app = web.Application(client_max_size=4 * 1024 * 1024)
        cni_app.router.add_post("/v1/cni", self.serve_cni)
        await self._listen_unix(cni_app, pathlib.Path(cfg.socket))
        health_app = web.Application()
        health_app.router.add_get("/healthz", self.serve_health)
        health_app.router.add_get("/readyz", self.serve_ready)
        health_app.router.add_get("/metrics", self.serve_metrics)
        runner = web.AppRunner(health_app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, cfg.health_address, cfg.health_port).start()
        LOG.info("kuryr daemon serving CNI on %s, health on %s:%d (host %s, %s mode, pool %s)",
                 cfg.socket, cfg.health_address, cfg.health_port, host, cfg.mode,
                 "on" if self.pool else "off")

    async def _start_standalone(self) -> None:
        cfg = self.config.cni_daemon
        host = self.config.binding.host
        self.neutron = client.Neutron.from_settings(self.config,
                                                    observer=self.metrics.observe_neutron)
        if cfg.pool_enabled:
            self.pool = warm.PortPool(self.neutron, self.binders, host=host,
                                      size=cfg.pool_size, batch=cfg.pool_batch,
                                      active_timeout=cfg.port_active_timeout)
            await self.pool.start()
        handler = standalone.Standalone(self.neutron, self.binders, host=host, config=cfg,
                                        pool=self.pool)
        self.handler = handler
        try:
            # Before serving: releases a killed daemon left unfinished (their OVS port is gone).
            released = await handler.recover()
            if released:
                LOG.info("released %d port(s) left unplugged by a previous run", len(released))
        except errors.KuryrError as e:
            LOG.warning("cannot look for ports left unplugged by a previous run: %s; GC will "
                        "release them", e)

    async def _listen_unix(self, app: web.Application, path: pathlib.Path) -> None:
        _prepare_socket_path(path)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        self._runners.append(runner)
        old_umask = os.umask(0o177)  # the socket is born 0600: root only
        try:
            await web.UnixSite(runner, str(path)).start()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.handler is not None:
            await self.handler.close()
        if self.pool is not None:
            await self.pool.close()
        for b in self.binders.values():
            b.close()
        if self.neutron is not None:
            self.neutron.close()
        if self.kube is not None:
            await self.kube.close()
        _remove_socket(pathlib.Path(self.config.cni_daemon.socket))

    async def serve_cni(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        version = FALLBACK_VERSION
        command = container = "?"
        try:
            body: Any = json.loads(await request.read())
            env, conf = body["env"], body["config"]
            if not isinstance(env, dict) or not isinstance(conf, dict):
                raise TypeError("env and config must be objects")
        except (ValueError, KeyError, TypeError) as e:
            return error_response(codes.CniError(codes.DECODE_FAILURE,
                                                 f"malformed request from the CNI shim: {e}"),
                                  version)
        if conf.get("cniVersion") in protocol.SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
        command = str(env.get("CNI_COMMAND", "?"))
        container = str(env.get("CNI_CONTAINERID", ""))[:12] or "-"
        assert self.handler is not None
        try:
            cni_request = protocol.parse_request(env, conf,
                                                 needs_network=self.handler.needs_network)
            with observing.serving(command):
                result = await dispatch(self.handler, cni_request)
        except Exception as e:  # every failure goes back to the runtime as a CNI error
            error = codes.from_exception(e)
            seconds = time.monotonic() - started
            self.metrics.observe_cni(command, str(error.code), seconds)
            log = LOG.exception if error.code == codes.INTERNAL else LOG.warning
            log("%s %s %s failed in %.0f ms: code %d: %s", command, container,
                env.get("CNI_IFNAME", ""), seconds * 1000, error.code, error.msg)
            return error_response(error, version)
        seconds = time.monotonic() - started
        self.metrics.observe_cni(command, observing.OK, seconds)
        LOG.info("%s %s %s done in %.0f ms", command, container, env.get("CNI_IFNAME", ""),
                 seconds * 1000)
        if result is None:
            return web.Response(status=200)
        return web.json_response(results.to_wire(result, version))

    async def serve_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    async def serve_ready(self, request: web.Request) -> web.Response:
        assert self.handler is not None
        try:
            await self.handler.status()
        except codes.CniError as e:
            return web.json_response({"status": "not ready", "code": e.code, "msg": e.msg},
                                     status=503)
        return web.json_response({"status": "ready"})


def _prepare_socket_path(path: pathlib.Path) -> None:
    """Make the socket's directory; remove a stale socket. Raises ConfigError when another
    daemon listens there."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if path.exists() or path.is_symlink():
        if _is_listening(path):
            raise errors.ConfigError(f"another kuryr daemon is already listening on {path}")
        path.unlink()


def _remove_socket(path: pathlib.Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _is_listening(path: pathlib.Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


async def serve(config: settings.KuryrSettings, *, stop: asyncio.Event) -> None:
    """Run a daemon until ``stop`` is set."""
    daemon = Daemon(config)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
