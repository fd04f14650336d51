"""Attach a container to a Neutron network and detach it again.

``attach`` creates the port with ``binding:host_id`` set (before plugging: a port plugged
first stays DOWN for good), plugs it with the binder of its VIF type, and waits, bounded, for
it to be ready: for this node's ovn-controller to have installed its flows where the binder
can tell (``Binder.wait_ready``, ``[binding] readiness``), else for Neutron's ACTIVE. Each
step registers its undo first, so a failure or a cancellation anywhere leaves no port, veth
or OVS port behind. ``detach`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from kuryr import binding, errors, model
from kuryr.linux import announcing, interfaces, namespaces
from kuryr.neutron import client, resources

LOG = logging.getLogger(__name__)

DEVICE_OWNER = "compute:kuryr"


@dataclasses.dataclass(frozen=True)
class Attachment:
    """A plugged port: the Neutron port, its VIF and where it lives."""

    port: resources.Port
    vif: model.VIF
    netns: str
    ifname: str


async def attach(neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 network_id: str, netns: str, ifname: str, host: str,
                 tags: Iterable[str] = (), security_group_ids: Sequence[str] | None = None,
                 fixed_ips: Sequence[Mapping[str, str]] | None = None,
                 mac: str | None = None,
                 project_id: str | None = None, name: str = "",
                 active_timeout: float = 30.0, mtu: int | None = None) -> Attachment:
    """Create and plug a port for a container and wait until it is ready (``mtu`` lowers the
    network's; ``mac``: the port's MAC, else Neutron picks one).

    Raises NotFoundError, QuotaExceededError, PermanentError, TemporaryError (Neutron or the
    readiness bound), NamespaceNotFoundError, BindingError. Nothing is left behind on failure.
    """
    # Cheap checks first: a bad name or a missing namespace costs no Neutron round trip.
    interfaces.check_ifname(ifname)
    namespaces.resolve(netns)
    async with contextlib.AsyncExitStack() as undo:
        # The create goes on in its thread if this is cancelled: the port it makes is deleted
        # once it exists (in the background), not left behind.
        creating = asyncio.ensure_future(neutron.create_port(
            network_id, tags=tags, name=name, host_id=host, device_owner=DEVICE_OWNER,
            security_group_ids=security_group_ids, fixed_ips=fixed_ips, mac=mac,
            project_id=project_id))
        try:
            port = await asyncio.shield(creating)
        except asyncio.CancelledError:
            _spawn(_delete_when_made(neutron, creating))
            raise
        undo.push_async_callback(_rollback, "delete port", neutron.delete_port, port.id)
        attachment = await _plug_and_activate(neutron, binders, port, netns=netns,
                                              ifname=ifname, active_timeout=active_timeout,
                                              mtu=mtu)
        undo.pop_all()
    return attachment


async def plug_existing(neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                        port_id: str, netns: str, ifname: str, host: str,
                        active_timeout: float = 30.0, mtu: int | None = None) -> Attachment:
    """Plug a port that already exists (made by a controller or a Docker ``CreateEndpoint``):
    bind it to ``host`` if it is not, plug it and wait until it is ready. On failure the port
    is unplugged again but not deleted.

    Raises NotFoundError (no such port), TemporaryError, NamespaceNotFoundError, BindingError.
    """
    port = await neutron.get_port(port_id)
    if port.host_id != host:
        port = await neutron.update_port(port_id, binding_host_id=host)
    return await _plug_and_activate(neutron, binders, port, netns=netns, ifname=ifname,
                                    active_timeout=active_timeout, mtu=mtu)


async def plug_existing_host_side(neutron: client.Neutron,
                                  binders: Mapping[str, binding.Binder], *, port_id: str,
                                  peer_ifname: str, host: str, wait_active: bool = True,
                                  active_timeout: float = 30.0) -> Attachment:
    """Plug a port that already exists for a runtime that moves the interface into the
    container itself (Docker's ``Join``): bind it to ``host`` if it is not, plug it with the
    container end left in the host namespace as ``peer_ifname``, and (``wait_active``) wait
    until it is ready. On failure the port is unplugged again but not deleted.

    Raises NotFoundError (no such port), TemporaryError, BindingError, PermanentError.
    """
    port = await neutron.get_port(port_id)
    if port.host_id != host:
        port = await neutron.update_port(port_id, binding_host_id=host)
    vif = await neutron.vif_for_port(port)
    binder = binding.binder_for(dict(binders), vif)
    async with contextlib.AsyncExitStack() as undo:
        undo.push_async_callback(_rollback_unplug, binder, vif)
        await binder.plug_host_side(vif, peer_ifname=peer_ifname)
        ready = wait_active and await wait_ready(neutron, binder, port, vif,
                                                 timeout=active_timeout)
        undo.pop_all()
    return Attachment(port=port, vif=dataclasses.replace(vif, is_active=ready),
                      netns="", ifname=peer_ifname)


async def _plug_and_activate(neutron: client.Neutron, binders: Mapping[str, binding.Binder],
                             port: resources.Port, *, netns: str, ifname: str,
                             active_timeout: float, mtu: int | None = None) -> Attachment:
    vif = await neutron.vif_for_port(port)
    if mtu and mtu < vif.mtu:
        vif = dataclasses.replace(vif, mtu=mtu)
    binder = binding.binder_for(dict(binders), vif)
    async with contextlib.AsyncExitStack() as undo:
        await plug(binder, vif, netns=netns, ifname=ifname, undo=undo)
        await wait_ready(neutron, binder, port, vif, timeout=active_timeout)
        undo.pop_all()
    await announce(vif, netns=netns, ifname=ifname)
    return Attachment(port=port, vif=dataclasses.replace(vif, is_active=True), netns=netns,
                      ifname=ifname)


async def wait_ready(neutron: client.Neutron, binder: binding.Binder, port: resources.Port,
                     vif: model.VIF, *, timeout: float) -> bool:
    """Wait, at most ``timeout`` seconds, until the plugged port's data path is ready: the
    binder's own signal where it has one (ovn-controller's ``ovn-installed``), else Neutron's
    ACTIVE. Returns True. Raises TemporaryError (not ready in time), BindingError."""
    if not await binder.wait_ready(vif, timeout=timeout):
        await neutron.wait_port_status(port.id, "ACTIVE", timeout=timeout)
    return True


async def announce(vif: model.VIF, *, netns: str, ifname: str) -> None:
    """Tell the network the port's addresses are at its MAC now (gratuitous ARP, unsolicited
    NA): a peer may hold a deleted port's MAC for a reused address, and OVN's ARP responder
    answers the new port's own requests, so the peer would never learn otherwise. Once the
    port is ready (earlier, OVS drops the frames), sent again 0.2 s later. Never raises."""
    await asyncio.to_thread(announcing.announce, ifname, netns=netns, mac=vif.mac,
                            addresses=[f.address for f in vif.fixed_ips])


async def plug(binder: binding.Binder, vif: model.VIF, *, netns: str, ifname: str,
               undo: contextlib.AsyncExitStack,
               owner_ids: Mapping[str, str] | None = None) -> None:
    """Plug ``vif`` (recording ``owner_ids`` with it), registering its unplug on ``undo``
    first."""
    undo.push_async_callback(_rollback_unplug, binder, vif)
    await binder.plug(vif, netns=netns, ifname=ifname, owner_ids=owner_ids)


async def detach(neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 port_id: str, binding_type: str = "ovs", netns: str | None = None,
                 ifname: str | None = None, delete_port: bool = True) -> None:
    """Unplug the port and delete it (unless ``delete_port`` is false). Idempotent: a port,
    link or namespace that is already gone is success. Raises BindingError, TemporaryError."""
    binder = binders.get(binding_type)
    if binder is None:
        raise errors.PermanentError(f"no binder for VIF type {binding_type!r}")
    stub = model.VIF(port_id=port_id, mac="", network_id="", mtu=0, fixed_ips=(), subnets=(),
                     binding_type=binding_type)
    await binder.unplug(stub, netns=netns, ifname=ifname)
    if delete_port:
        await neutron.delete_port(port_id)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _delete_when_made(neutron: client.Neutron,
                            creating: asyncio.Future[resources.Port]) -> None:
    """Delete the port of a create whose caller was cancelled, once the create returns."""
    try:
        port = await creating
    except Exception:  # nothing was made (or nothing is known of it)
        return
    LOG.info("deleting port %s: the request that created it was cancelled", port.id)
    await _rollback("delete port", neutron.delete_port, port.id)


async def _rollback(what: str, step: Callable[[str], Awaitable[None]], arg: str) -> None:
    try:
        await step(arg)
    except errors.KuryrError as e:
        LOG.error("rollback: %s failed: %s", what, e)


async def unplug_quietly(binder: binding.Binder, vif: model.VIF) -> None:
    """Unplug ``vif`` as a rollback step: a failure is logged, not raised."""
    await _rollback_unplug(binder, vif)


async def _rollback_unplug(binder: binding.Binder, vif: model.VIF) -> None:
    try:
        await binder.unplug(vif)
    except errors.KuryrError as e:
        LOG.error("rollback: unplug of port %s failed: %s", vif.port_id, e)
