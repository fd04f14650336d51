"""The OVS binder: a veth pair whose container end carries the Neutron port's MAC, addresses
and routes inside the container's namespace, and whose host end is a port of the integration
bridge (``br-int``) with ``external_ids:iface-id=<port id>``, so that OVN claims it.

Order matters (measured): the Neutron port must already have ``binding:host_id`` set; the
container end gets TX checksum offload off before it moves (userspace datapath).

Readiness (``wait_ready``): with ``[binding] readiness`` ``ovn`` (or ``auto`` on a node
configured for ovn-controller) a plugged port is ready once ovn-controller has set
``ovn-installed`` on its Interface; the OVSDB IDL tells us, no poll and no Neutron call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kuryr import errors, model, settings
from kuryr.linux import interfaces, namespaces, ovs

LOG = logging.getLogger(__name__)


def host_ifname(port_id: str) -> str:
    """The host end's name, as Neutron names taps: ``tap`` + the first 11 chars of the port."""
    return ("tap" + port_id)[: interfaces.IFNAMSIZ - 1]


async def _to_thread_to_the_end(fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run ``fn`` in a thread; if the caller is cancelled meanwhile, wait for the thread to
    finish before the cancellation goes on, so that a rollback (unplug) never races a plug
    still running (which would leave what it made after the rollback)."""
    running = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await running
        raise


def _temp_ifname(port_id: str) -> str:
    return ("kt" + port_id)[: interfaces.IFNAMSIZ - 1]


class OvsBinder:
    """Plugs VIFs of binding type ``ovs`` into the integration bridge."""

    def __init__(self, config: settings.BindingSettings) -> None:
        self.config = config
        self.ovsdb = ovs.Ovsdb(config.ovsdb_connection, timeout=config.ovsdb_timeout)
        self._uses_ovn: bool | None = {"ovn": True, "neutron": False}.get(config.readiness)

    async def uses_ovn(self) -> bool:
        """Whether readiness comes from ovn-controller here (``auto``: looked up once)."""
        if self._uses_ovn is None:
            self._uses_ovn = await asyncio.to_thread(self.ovsdb.runs_ovn)
            LOG.info("readiness of plugged ports: %s",
                     "ovn-controller's ovn-installed" if self._uses_ovn
                     else "Neutron's ACTIVE (this node is not configured for ovn-controller)")
        return self._uses_ovn

    async def wait_ready(self, vif: model.VIF, *, timeout: float) -> bool:
        """Wait until ovn-controller has installed the flows of ``vif``'s port (True), or
        return False at once when readiness is Neutron's here. Raises TemporaryError after
        ``timeout`` seconds, BindingError."""
        if not await self.uses_ovn():
            return False
        host = host_ifname(vif.port_id)
        installed = await asyncio.to_thread(self.ovsdb.installed, host)
        try:
            await asyncio.wait_for(asyncio.wrap_future(installed), timeout)
        except TimeoutError:
            raise errors.TemporaryError(
                f"port {vif.port_id} (OVS interface {host}) was not installed by this node's "
                f"ovn-controller within {timeout:g} s: is ovn-controller running and connected "
                "to the OVN Southbound DB?") from None
        finally:
            installed.cancel()
        return True

    def close(self) -> None:
        self.ovsdb.close()

    async def plug(self, vif: model.VIF, *, netns: str, ifname: str,
                   owner_ids: Mapping[str, str] | None = None) -> None:
        """Plug ``vif`` into ``netns`` as ``ifname``, with ``owner_ids`` added to the OVS
        Interface's ``external_ids`` (an earlier plug's values of the same keys are
        replaced).
        Idempotent; on failure nothing is left.

        Raises NamespaceNotFoundError, BindingError, PermanentError (bad ifname).
        """
        await _to_thread_to_the_end(self.plug_sync, vif, netns=netns, ifname=ifname,
                                    owner_ids=owner_ids)

    async def unplug(self, vif: model.VIF, *, netns: str | None = None,
                     ifname: str | None = None) -> None:
        await asyncio.to_thread(self.unplug_sync, vif.port_id, netns=netns, ifname=ifname)

    async def plug_host_side(self, vif: model.VIF, *, peer_ifname: str) -> None:
        """Plug ``vif`` with its container end left in the host namespace as ``peer_ifname``
        (down, with the port's MAC and MTU, TX checksum offload off): the runtime moves it into
        the container and sets addresses and routes. Idempotent; on failure nothing is left.

        Raises BindingError, PermanentError (bad ifname).
        """
        await _to_thread_to_the_end(self.plug_host_side_sync, vif, peer_ifname=peer_ifname)

    def plug_host_side_sync(self, vif: model.VIF, *, peer_ifname: str) -> None:
        interfaces.check_ifname(peer_ifname)
        host = host_ifname(vif.port_id)
        with contextlib.ExitStack() as undo:
            if interfaces.link_exists(host) and not interfaces.link_exists(peer_ifname):
                # A leftover of an interrupted plug, or of a container that is gone.
                interfaces.delete_link(host)
            if not interfaces.link_exists(host):
                interfaces.delete_link(peer_ifname)  # a leftover of an interrupted plug
                undo.callback(self._undo_link, host)
                interfaces.create_veth(host, peer_ifname, mac=vif.mac, mtu=vif.mtu)
            self._attach_host_end(host, vif, undo)
            undo.pop_all()
        LOG.info("plugged port %s with its container end %s in the host namespace (host end "
                 "%s)", vif.port_id, peer_ifname, host)

    def plug_sync(self, vif: model.VIF, *, netns: str, ifname: str,
                  owner_ids: Mapping[str, str] | None = None) -> None:
        interfaces.check_ifname(ifname)
        path = namespaces.resolve(netns)
        host = host_ifname(vif.port_id)
        with contextlib.ExitStack() as undo:
            if interfaces.link_exists(host) and not interfaces.link_exists(ifname, netns=path):
                # A leftover from an interrupted plug: start again from nothing.
                interfaces.delete_link(host)
            if not interfaces.link_exists(host):
                temp = _temp_ifname(vif.port_id)
                interfaces.delete_link(temp)  # a leftover of an interrupted plug
                undo.callback(self._undo_link, host)
                interfaces.create_veth(host, temp, mac=vif.mac, mtu=vif.mtu)
                interfaces.move_to_netns(temp, path, new_ifname=ifname)
            interfaces.configure(
                ifname, netns=path, mtu=vif.mtu,
                addresses=[f.address for f in vif.fixed_ips],
                gateways=vif.gateways(), routes=vif.routes())
            self._attach_host_end(host, vif, undo, owner_ids=owner_ids)
            undo.pop_all()
        LOG.info("plugged port %s into %s as %s (host end %s)", vif.port_id, netns, ifname, host)

    def unplug_sync(self, port_id: str, *, netns: str | None = None,
                    ifname: str | None = None) -> None:
        """Remove the OVS port and the veth pair; everything already gone is success.
        ``netns`` and ``ifname`` are accepted for binders that need them; this one does not."""
        del netns, ifname
        host = host_ifname(port_id)
        self.ovsdb.delete_port(host)
        # Deleting the host end deletes its peer, the container end, wherever it is.
        interfaces.delete_link(host)
        interfaces.delete_link(_temp_ifname(port_id))
        LOG.info("unplugged port %s (host end %s)", port_id, host)

    def plugged_port_ids(self) -> set[str]:
        """The Neutron ports with an OVS interface on this host (blocking). Raises
        BindingError."""
        return self.ovsdb.iface_ids()

    def owned_ports(self) -> dict[str, dict[str, str]]:
        """The ports kuryr plugged into the bridge: Neutron port ID -> the Interface's
        ``external_ids`` (with the ``owner_ids`` of their plug). Blocking; raises
        BindingError."""
        found = self.ovsdb.owned_ports(self.config.ovs_bridge)
        return {ids["iface-id"]: ids for ids in found.values() if ids.get("iface-id")}

    def _attach_host_end(self, host: str, vif: model.VIF, undo: contextlib.ExitStack, *,
                         owner_ids: Mapping[str, str] | None = None) -> None:
        """Bring the host end up and make it the OVS port OVN claims for the Neutron port."""
        interfaces.set_up(host, mtu=vif.mtu)
        undo.callback(self._undo_ovs_port, host)
        self.ovsdb.add_port(self.config.ovs_bridge, host, external_ids={
            **(owner_ids or {}),
            "iface-id": vif.port_id,
            "attached-mac": vif.mac,
            "iface-status": "active",
        })

    def _undo_link(self, host: str) -> None:
        try:
            interfaces.delete_link(host)
        except errors.KuryrError as e:
            LOG.error("rollback: cannot delete %s: %s", host, e)

    def _undo_ovs_port(self, host: str) -> None:
        try:
            self.ovsdb.delete_port(host)
        except errors.KuryrError as e:
            LOG.error("rollback: cannot delete OVS port %s: %s", host, e)
