"""The plugin's HTTP server (aiohttp): routes Docker's calls to the two drivers, turns kuryr
errors into ``{"Err": ...}`` with HTTP 500 (Docker drops the message of any other status),
answers 404 for paths it does not serve, and listens where Docker discovers plugins: a unix
socket ``/run/docker/plugins/<name>.sock`` (mode 0600), or 127.0.0.1:PORT announced by
``/etc/docker/plugins/<name>.spec``.

Owns the wiring of Neutron, binders, the warm pool and drivers at start-up (the pool is
rebuilt and unfinished releases resumed before the plugin listens), and their shutdown. Every
Neutron call is logged at debug level with the Docker call it served (``background`` for the
pool's own work), which is how the calls of a container's hot path are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from kuryr import binding, errors, settings, stopping
from kuryr.libnetwork import claims, ipam_driver, network_driver, wire
from kuryr.neutron import client
from kuryr.pools import warm

LOG = logging.getLogger(__name__)

SPEC_DIR = pathlib.Path("/etc/docker/plugins")
Handler = Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]
# The Docker call being served, for the log of the Neutron calls it makes.
SERVING: contextvars.ContextVar[str] = contextvars.ContextVar("serving", default="background")


def observe_neutron(operation: str, result: str, seconds: float) -> None:
    """The Neutron facade's observer: one debug line per call, naming the Docker call."""
    LOG.debug("Neutron call %s: %s in %.1f ms, for %s", operation, result, seconds * 1000,
              SERVING.get())


async def _activate(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


def routes(network: network_driver.NetworkDriver,
           ipam: ipam_driver.IpamDriver) -> dict[str, Handler]:
    """Every path of the two protocols and its handler."""
    return {
        "/Plugin.Activate": _activate,
        "/NetworkDriver.GetCapabilities": network.get_capabilities,
        "/NetworkDriver.CreateNetwork": network.create_network,
        "/NetworkDriver.DeleteNetwork": network.delete_network,
        "/NetworkDriver.AllocateNetwork": network.allocate_network,
        "/NetworkDriver.FreeNetwork": network.free_network,
        "/NetworkDriver.CreateEndpoint": network.create_endpoint,
        "/NetworkDriver.EndpointOperInfo": network.endpoint_oper_info,
        "/NetworkDriver.DeleteEndpoint": network.delete_endpoint,
        "/NetworkDriver.Join": network.join,
        "/NetworkDriver.Leave": network.leave,
        "/NetworkDriver.ProgramExternalConnectivity": network.program_external_connectivity,
        "/NetworkDriver.RevokeExternalConnectivity": network.revoke_external_connectivity,
        "/NetworkDriver.DiscoverNew": network.discover,
        "/NetworkDriver.DiscoverDelete": network.discover,
        "/IpamDriver.GetCapabilities": ipam.get_capabilities,
        "/IpamDriver.GetDefaultAddressSpaces": ipam.get_default_address_spaces,
        "/IpamDriver.RequestPool": ipam.request_pool,
        "/IpamDriver.ReleasePool": ipam.release_pool,
        "/IpamDriver.RequestAddress": ipam.request_address,
        "/IpamDriver.ReleaseAddress": ipam.release_address,
        "/IpamDriver.DiscoverNew": network.discover,
        "/IpamDriver.DiscoverDelete": network.discover,
    }


def make_app(handlers: Mapping[str, Handler]) -> web.Application:
    """The aiohttp application serving ``handlers`` (see ``routes``)."""

    async def dispatch(request: web.Request) -> web.Response:
        path = request.path
        handler = handlers.get(path)
        if handler is None:
            return _reply({"Err": f"kuryr does not serve {request.method} {path}"}, status=404)
        what = path.lstrip("/")
        started = time.monotonic()
        SERVING.set(what)  # this request's own context (aiohttp runs each in a task)
        try:
            body = wire.parse_body(await request.read(), what=what)
            result = await handler(body)
        except errors.KuryrError as e:
            # Wire errors already name the call; the others get it here.
            text = f"kuryr: {e}" if isinstance(e, wire.WireError) else f"kuryr: {what}: {e}"
            LOG.warning("%s", text)
            return _reply({"Err": text}, status=500)
        except Exception as e:  # a bug: still answer Docker in its format
            LOG.exception("%s failed unexpectedly", what)
            return _reply({"Err": f"kuryr: {what}: internal error {type(e).__name__}: {e} "
                                  "(see the kuryr libnetwork log)"}, status=500)
        LOG.debug("%s took %.1f ms", what, (time.monotonic() - started) * 1000)
        return _reply(dict(result))

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


def _reply(body: Mapping[str, Any], *, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, content_type=wire.CONTENT_TYPE)


@dataclasses.dataclass
class Plugin:
    """A running plugin: the aiohttp runner and where it announced itself."""

    runner: web.AppRunner
    address: str
    announced: pathlib.Path


@contextlib.asynccontextmanager
async def serving(config: settings.KuryrSettings, *,
                  host: str | None = None) -> AsyncIterator[Plugin]:
    """Wire Neutron, binders, the pool and drivers, and serve until the block ends. ``host``
    as ``127.0.0.1:PORT`` serves TCP with a ``.spec`` file instead of the unix socket.

    Raises ConfigError (Neutron not configured, bad ``host``), KuryrError (socket in use)."""
    socket_path = pathlib.Path(config.libnetwork.socket_path)
    name = socket_path.stem
    if host is None and _prepare_dir(socket_path) and await _answers(socket_path):
        # Before anything else: the pool of a driver of the same name is that one's.
        raise errors.PermanentError(
            f"{socket_path} is in use by another running driver; stop it or set "
            "[libnetwork] socket_path")
    neutron = client.Neutron.from_settings(config, observer=observe_neutron)
    binders = binding.binders(config.binding)
    cfg = config.libnetwork
    pool = warm.PortPool(neutron, binders, host=config.binding.host, size=cfg.pool_size,
                         batch=cfg.pool_batch, active_timeout=config.neutron.port_active_timeout,
                         name=f"docker-{name}") if cfg.pool_enabled else None
    networks = claims.Networks(neutron, config.cluster_id)
    claimed = claims.Claims()
    ipam = ipam_driver.IpamDriver(neutron, binders, config=config, networks=networks,
                                  claimed=claimed, pool=pool)
    network = network_driver.NetworkDriver(neutron, binders, config=config, networks=networks,
                                           claimed=claimed, pool=pool)
    runner = web.AppRunner(make_app(routes(network, ipam)), access_log=None)
    announced: pathlib.Path | None = None
    try:
        if pool is not None:
            await _start_pool(pool, network)
        await runner.setup()
        if host is None:
            await _serve_unix(runner, socket_path)
            announced = socket_path
            address = f"unix://{socket_path}"
        else:
            address_host, _, port = host.rpartition(":")
            if not address_host or not port.isdigit():
                raise errors.ConfigError(f"--host {host!r}: expected 127.0.0.1:PORT")
            site = web.TCPSite(runner, address_host, int(port))
            await site.start()
            address = f"tcp://{host}"
            announced = _write_spec(name, address)
        LOG.info("kuryr libnetwork driver %r listening on %s (pool %s)", name, address,
                 f"of {cfg.pool_size} per network" if pool is not None else "off")
        yield Plugin(runner=runner, address=address, announced=announced)
    finally:
        await runner.cleanup()
        if announced is not None:
            announced.unlink(missing_ok=True)
        if pool is not None:
            await pool.close()
        for b in binders.values():
            b.close()
        neutron.close()


async def _start_pool(pool: warm.PortPool, network: network_driver.NetworkDriver) -> None:
    """Find the pool again, resume the releases a killed driver left unfinished, and refill
    the pools found. Raises TemporaryError, BindingError (the pool namespace)."""
    await pool.start()
    try:
        released = await network.recover()
        if released:
            LOG.info("releasing %d endpoint port(s) left unplugged by a previous run",
                     len(released))
    except errors.KuryrError as e:
        LOG.warning("cannot look for endpoint ports left unplugged by a previous run: %s; the "
                    "next start tries again", e)
    for key in list(pool.ready):
        pool.wake(key)


async def _serve_unix(runner: web.AppRunner, path: pathlib.Path) -> None:
    """Listen on ``path`` with mode 0600 from the first moment (the umask is set around the
    bind, so no other user ever sees a wider socket)."""
    if _prepare_dir(path):
        if await _answers(path):
            raise errors.PermanentError(
                f"{path} is in use by another running driver; stop it or set "
                "[libnetwork] socket_path")
        os.unlink(path)  # a stale socket of a driver that died
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def _prepare_dir(path: pathlib.Path) -> bool:
    """Make the socket's directory; whether something already sits at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.exists() or path.is_symlink()


def _write_spec(name: str, address: str) -> pathlib.Path:
    SPEC_DIR.mkdir(parents=True, exist_ok=True)
    spec = SPEC_DIR / f"{name}.spec"
    spec.write_text(address + "\n", encoding="utf-8")
    return spec


async def _answers(path: pathlib.Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def run(config: settings.KuryrSettings, *, host: str | None = None,
        ready: Callable[[Plugin], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        stopping.on_signals(stop, name="kuryr libnetwork")
        async with serving(config, host=host) as plugin:
            if ready is not None:
                ready(plugin)
            await stop.wait()

    asyncio.run(main())
