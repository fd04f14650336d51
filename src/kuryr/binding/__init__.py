"""Binders: one per VIF binding type, each plugging a VIF into a network namespace and
unplugging it. Registered in a plain dict by binding type; the caller wires the binder it needs
at start-up (``binders(settings)``).

Every binder is idempotent and rolls back what it did when a step fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kuryr import errors, model, settings


class Binder(Protocol):
    """Plugs a VIF into a network namespace under ``ifname`` and unplugs it."""

    async def plug(self, vif: model.VIF, *, netns: str, ifname: str,
                   owner_ids: Mapping[str, str] | None = None) -> None:
        """``owner_ids`` are recorded with the plugged port (OVS ``external_ids``), so that
        whoever plugged it can find it again from the host alone.
        Raises NamespaceNotFoundError, BindingError."""

    async def plug_host_side(self, vif: model.VIF, *, peer_ifname: str) -> None:
        """Plug ``vif`` but leave the container end in the host namespace as ``peer_ifname``,
        unconfigured, for a runtime that moves and configures it itself (Docker).
        Raises BindingError, PermanentError (bad ifname)."""

    async def wait_ready(self, vif: model.VIF, *, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, until this host's own network agent says the
        plugged ``vif``'s data path is ready. False at once when the host has no such signal
        (``[binding] readiness``): the caller waits for Neutron's ACTIVE instead.
        Raises TemporaryError (not ready in time), BindingError."""

    async def unplug(self, vif: model.VIF, *, netns: str | None = None,
                     ifname: str | None = None) -> None:
        """Idempotent: whatever is already gone is success. Raises BindingError."""

    def close(self) -> None:
        """Release connections (OVSDB)."""


def binders(config: settings.BindingSettings) -> dict[str, Binder]:
    """The binders of this host, by binding type."""
    from kuryr.binding import ovs

    return {"ovs": ovs.OvsBinder(config)}


def binder_for(registry: dict[str, Binder], vif: model.VIF) -> Binder:
    try:
        return registry[vif.binding_type]
    except KeyError:
        raise errors.PermanentError(
            f"no binder for VIF type {vif.binding_type!r}; known: {', '.join(registry)}") from None
