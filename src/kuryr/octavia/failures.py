"""The one place where Octavia and transport failures become kuryr errors.

Octavia answers errors as ``{"faultcode", "faultstring", "debuginfo"}`` and names no error
type, so a 409 is told apart by its text here, once: a load balancer that is PENDING_* (the
``ImmutableObject`` and ``LBPendingStateError`` conflicts, the usual 409) is
``TemporaryError``; a duplicate ("Another Listener ... is already using", "already has a
default pool", a VIP address "already in use") or an object in use is ``PermanentError``.
404 is ``NotFoundError``; a quota (403 "Quota has been met") ``QuotaExceededError``; 5xx,
408, 429, timeouts and refused or reset connections are ``TemporaryError``; 501 (what the
provider does not support, e.g. an HTTP listener on OVN) and every other 4xx
``PermanentError``. Octavia's own message is kept (``debuginfo``, a traceback when Octavia
runs with debug, is not); URLs and credentials are not. A call that cannot create anything
twice (get, list, delete) is sent once more when the connection failed under it
(``is_repeatable``).
"""

from __future__ import annotations

from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from kuryr import errors

# Octavia's 409s that retrying will not fix, by the words of their messages (octavia 19):
# duplicates (DuplicateListenerEntry, DuplicateMemberEntry, DuplicatePoolEntry,
# DuplicateHealthMonitor, IDAlreadyExists, RecordAlreadyExists, VIPAddressConflict "already in
# use"), ObjectInUse and PoolInUseByL7Policy ("in use"), TooManyL7RulesOnL7Policy. The other
# 409s (ImmutableObject, LBPendingStateError) are a load balancer that is PENDING_*: busy.
_PERMANENT_CONFLICT_WORDS = ("already", "duplicate", "in use", "too many")


def octavia_error(e: sdk_exceptions.HttpException) -> str:
    """Octavia's message (``faultstring``) from an HTTP error, else the SDK's."""
    message = str(e.details or "") or e.message
    response = e.response
    if response is not None:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("faultstring"):
            message = str(body["faultstring"])
    return message


def translate(e: BaseException, what: str) -> errors.KuryrError:
    """The kuryr error for a failure of ``what`` (e.g. "create listener on load balancer X")."""
    if isinstance(e, errors.KuryrError):
        return e
    if isinstance(e, sdk_exceptions.HttpException):
        status = e.status_code or 0
        message = octavia_error(e)
        text = f"{what}: Octavia answered {status}: {message}" if status else f"{what}: {message}"
        lowered = message.lower()
        if status == 404 or isinstance(e, sdk_exceptions.NotFoundException):
            return errors.NotFoundError(text)
        if status == 409:
            if any(w in lowered for w in _PERMANENT_CONFLICT_WORDS):
                return errors.PermanentError(text)
            # PENDING_* (immutable while the provider works): ~0.5 s with the OVN provider.
            return errors.TemporaryError(text, delay=0.5)
        if status == 413 or "quota" in lowered:
            return errors.QuotaExceededError(text)
        if status == 501:
            return errors.PermanentError(text)
        if status in (408, 429) or status >= 500:
            return errors.TemporaryError(text, delay=2.0)
        return errors.PermanentError(text)
    if isinstance(e, sdk_exceptions.ResourceTimeout):
        return errors.TemporaryError(f"{what}: timed out: {e}", delay=1.0)
    if isinstance(e, ks_exceptions.ConnectFailure | ks_exceptions.ConnectTimeout
                  | ks_exceptions.DiscoveryFailure | sdk_exceptions.ServiceDiscoveryException):
        return errors.TemporaryError(
            f"{what}: cannot reach Octavia ({type(e).__name__}); is it running "
            "(kuryr cloud status)?", delay=2.0)
    if isinstance(e, ks_exceptions.RetriableConnectionFailure | ks_exceptions.ClientException):
        return errors.TemporaryError(f"{what}: {type(e).__name__}: {e}", delay=2.0)
    if isinstance(e, sdk_exceptions.SDKException):
        return errors.PermanentError(f"{what}: {e}")
    if isinstance(e, TimeoutError | ConnectionError):
        return errors.TemporaryError(f"{what}: {type(e).__name__}: {e}", delay=2.0)
    return errors.PermanentError(f"{what}: unexpected {type(e).__name__}: {e}")


# Calls that change nothing, or whose repetition changes nothing more (deletes ignore a
# missing resource): safe to send again when the connection failed under them. A batch member
# update is a PUT of the whole set, but it is not repeated: a first one that did arrive leaves
# the load balancer PENDING_UPDATE, and the second would only meet a 409.
_REPEATABLE = ("get ", "list ", "delete ")


def is_repeatable(e: BaseException, what: str) -> bool:
    """Whether the call ``what`` may be sent once more after ``e``: the connection failed
    (refused, reset, a pooled keep-alive connection the server had closed) and repeating
    ``what`` cannot create anything twice."""
    return isinstance(e, ks_exceptions.ConnectFailure) and what.startswith(_REPEATABLE)
