"""The one family of kuryr errors.

Owns the error hierarchy and the retry policy it carries: a ``TemporaryError`` may succeed if
tried again after ``delay`` seconds, a ``PermanentError`` will not. Each adapter (Neutron, netlink,
OVSDB) maps its own wire errors into this family in one function; nothing here knows a wire.
"""

from __future__ import annotations


class KuryrError(Exception):
    """The root of every error kuryr raises on purpose."""


class TemporaryError(KuryrError):
    """A failure that may go away: retry after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(KuryrError):
    """A failure that retrying will not fix: bad input, a missing resource, a quota."""


class NotFoundError(PermanentError):
    """The resource asked for does not exist."""


class ConflictError(PermanentError):
    """The request conflicts with the resource's present state (already there, not there,
    in use): the same request fails again; read the state again and decide."""


class QuotaExceededError(PermanentError):
    """A quota or address pool is exhausted."""


class ConfigError(PermanentError):
    """The configuration is malformed or incomplete."""


class BindingError(KuryrError):
    """Plugging or unplugging an interface failed (netlink, OVSDB, namespace)."""


class NamespaceNotFoundError(BindingError, PermanentError):
    """The network namespace named does not exist."""
