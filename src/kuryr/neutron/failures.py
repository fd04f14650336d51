"""The one place where Neutron and transport failures become kuryr errors.

5xx, 409 revision conflicts, timeouts and refused connections are ``TemporaryError``; every
other 4xx is ``PermanentError`` (``NotFoundError`` for 404, ``QuotaExceededError`` for quota
and address exhaustion). Neutron's own message is kept; URLs and credentials are not. A call
that cannot create anything twice (find, get, list, delete, and the absolute PUTs of a
router's gateway and a floating IP's port) is sent once more when the connection failed under it
(``is_repeatable``).
"""

from __future__ import annotations

from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from kuryr import errors

# Neutron error types (NeutronError.type) that retrying will not fix although sent as 409.
_PERMANENT_CONFLICTS = {
    "OverQuota": errors.QuotaExceededError,
    "IpAddressGenerationFailure": errors.QuotaExceededError,
    "IpAddressAlreadyAllocated": errors.PermanentError,
    "MacAddressInUse": errors.PermanentError,
    "SubnetInUse": errors.PermanentError,
    "NetworkInUse": errors.PermanentError,
    "SecurityGroupInUse": errors.PermanentError,
    "RouterInUse": errors.PermanentError,
    "SubnetPoolInUse": errors.PermanentError,
    "PortInUse": errors.PermanentError,
    "TrunkInUse": errors.PermanentError,
    "PrefixPoolExhausted": errors.QuotaExceededError,
    "SubnetAllocationError": errors.QuotaExceededError,
    "SecurityGroupRuleExists": errors.PermanentError,
    "RouterInterfaceInUseByFloatingIP": errors.PermanentError,
    "RouterExternalGatewayInUseByFloatingIp": errors.PermanentError,
    "FloatingIPPortAlreadyAssociated": errors.PermanentError,
}


def neutron_error(e: sdk_exceptions.HttpException) -> tuple[str | None, str]:
    """Neutron's error type and message from an HTTP error."""
    kind: str | None = None
    message = str(e.details or "") or e.message
    response = e.response
    if response is not None:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("NeutronError"), dict):
            kind = body["NeutronError"].get("type")
            message = body["NeutronError"].get("message") or message
    return kind, message


def translate(e: BaseException, what: str) -> errors.KuryrError:
    """The kuryr error for a failure of ``what`` (e.g. "create port on network X")."""
    if isinstance(e, errors.KuryrError):
        return e
    if isinstance(e, sdk_exceptions.HttpException):
        status = e.status_code or 0
        kind, message = neutron_error(e)
        if status:
            text = f"{what}: Neutron answered {status}" + (f" {kind}" if kind else "") + \
                f": {message}"
        else:  # raised by the SDK itself, e.g. a find by name that matched nothing
            text = f"{what}: {message}"
        if status == 404 or isinstance(e, sdk_exceptions.NotFoundException):
            return errors.NotFoundError(text)
        if status == 409:
            permanent = _PERMANENT_CONFLICTS.get(kind or "")
            if permanent is not None:
                return permanent(text)
            return errors.TemporaryError(text, delay=0.5)
        if status in (408, 429) or status >= 500:
            return errors.TemporaryError(text, delay=2.0)
        if status == 413 or (kind and "Quota" in kind):
            return errors.QuotaExceededError(text)
        return errors.PermanentError(text)
    if isinstance(e, sdk_exceptions.ResourceTimeout):
        return errors.TemporaryError(f"{what}: timed out: {e}", delay=1.0)
    if isinstance(e, ks_exceptions.ConnectFailure | ks_exceptions.ConnectTimeout
                  | ks_exceptions.DiscoveryFailure):
        return errors.TemporaryError(
            f"{what}: cannot reach Neutron ({type(e).__name__}); is it running "
            "(kuryr cloud status)?", delay=2.0)
    if isinstance(e, ks_exceptions.RetriableConnectionFailure | ks_exceptions.ClientException):
        return errors.TemporaryError(f"{what}: {type(e).__name__}: {e}", delay=2.0)
    if isinstance(e, sdk_exceptions.SDKException):
        return errors.PermanentError(f"{what}: {e}")
    if isinstance(e, TimeoutError | ConnectionError):
        return errors.TemporaryError(f"{what}: {type(e).__name__}: {e}", delay=2.0)
    return errors.PermanentError(f"{what}: unexpected {type(e).__name__}: {e}")


# Calls that change nothing, or whose repetition changes nothing more (deletes ignore a
# missing resource; a router's gateway and a floating IP's port are set to absolute values):
# safe to send again when the connection failed under them.
_REPEATABLE = ("find ", "get ", "list ", "delete ", "set gateway ", "clear gateway ",
               "update floating ip ")


def is_repeatable(e: BaseException, what: str) -> bool:
    """Whether the call ``what`` may be sent once more after ``e``: the connection failed
    (refused, reset, a pooled keep-alive connection the server had closed) and repeating
    ``what`` cannot create anything twice."""
    return isinstance(e, ks_exceptions.ConnectFailure) and what.startswith(_REPEATABLE)
