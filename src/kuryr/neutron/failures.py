"""The one place where Neutron and transport failures become kuryr errors.

5xx, 409 revision conflicts, timeouts and refused connections are ``TemporaryError``; every
other 4xx is ``PermanentError`` (``NotFoundError`` for 404, ``QuotaExceededError`` for quota
and address exhaustion). The faults a caller branches on have a type of their own, defined here
(each an ``errors.ConflictError``) and chosen by Neutron's error type, never by its text:
``InUseError`` (a delete refused while something uses the resource), ``RuleExistsError`` (the
same security group rule exists), ``AddressesAlreadyInGroupError`` and
``AddressesNotInGroupError`` (the strict add and remove of an address group),
``AddressInUseError`` and ``MacAddressInUseError`` (a port asking for a fixed IP or MAC another
port holds), ``InvalidAddressError`` (a fixed IP not on the subnet or network named), and
``AmbiguousNameError`` (a find by name that matched several resources). Neutron's own
message is kept; URLs and credentials are not. A call that cannot create anything twice (find,
get, list, delete, and the absolute PUTs of a router's gateway, a floating IP's port and a
project's quota) is sent once more when the connection failed under it (``is_repeatable``).
"""

from __future__ import annotations

from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from kuryr import errors


class InUseError(errors.ConflictError):
    """A delete Neutron refuses while something still uses the resource (409 ``*InUse``: a
    security group on a port, an address group in a rule, a subnet with ports, ...)."""


class RuleExistsError(errors.ConflictError):
    """The security group rule exists already (409 ``SecurityGroupRuleExists``; Neutron
    ignores the description when it compares rules). In a bulk request nothing was made."""


class AddressesAlreadyInGroupError(errors.ConflictError):
    """``add_addresses`` named an address the group holds already (400
    ``AddressesAlreadyExist``); nothing was added."""


class AddressesNotInGroupError(errors.ConflictError):
    """``remove_addresses`` named an address the group does not hold (404
    ``AddressesNotFound``); nothing was removed. Not a ``NotFoundError``: the group exists
    (a missing group is ``NotFoundError``)."""


class AddressInUseError(errors.ConflictError):
    """A port create or update named a fixed IP that another port holds (409
    ``IpAddressAlreadyAllocated``); nothing was made."""


class MacAddressInUseError(errors.ConflictError):
    """A port create or update named a MAC that another port of the network holds (409
    ``MacAddressInUse``); nothing was made."""


class InvalidAddressError(errors.PermanentError):
    """A fixed IP that is not on the subnet or network named (400 ``InvalidIpForSubnet``,
    ``InvalidIpForNetwork``) or an invalid MAC (``InvalidInput`` aside); nothing was made."""


class AmbiguousNameError(errors.PermanentError):
    """A find by name matched several resources (the SDK's ``DuplicateResource``): only an
    ID tells which one is meant."""


# Neutron error types that callers tell apart, whatever the status they come with.
_TYPED = {
    "AddressesAlreadyExist": AddressesAlreadyInGroupError,
    "AddressesNotFound": AddressesNotInGroupError,
    "SecurityGroupRuleExists": RuleExistsError,
    "IpAddressAlreadyAllocated": AddressInUseError,
    "MacAddressInUse": MacAddressInUseError,
    "InvalidIpForSubnet": InvalidAddressError,
    "InvalidIpForNetwork": InvalidAddressError,
    "AddressGroupInUse": InUseError,
    "SecurityGroupInUse": InUseError,
    "SubnetInUse": InUseError,
    "NetworkInUse": InUseError,
    "RouterInUse": InUseError,
    "SubnetPoolInUse": InUseError,
    "TrunkInUse": InUseError,
}

# Neutron error types (NeutronError.type) that retrying will not fix although sent as 409.
_PERMANENT_CONFLICTS = {
    "OverQuota": errors.QuotaExceededError,
    "IpAddressGenerationFailure": errors.QuotaExceededError,
    "PortInUse": errors.PermanentError,
    "PrefixPoolExhausted": errors.QuotaExceededError,
    "SubnetAllocationError": errors.QuotaExceededError,
    "DuplicateSecurityGroupRuleInPost": errors.PermanentError,
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
        typed = _TYPED.get(kind or "")
        if typed is not None:
            return typed(text)
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
    if isinstance(e, sdk_exceptions.DuplicateResource):
        return AmbiguousNameError(f"{what}: {e}")
    if isinstance(e, sdk_exceptions.SDKException):
        return errors.PermanentError(f"{what}: {e}")
    if isinstance(e, TimeoutError | ConnectionError):
        return errors.TemporaryError(f"{what}: {type(e).__name__}: {e}", delay=2.0)
    return errors.PermanentError(f"{what}: unexpected {type(e).__name__}: {e}")


# Calls that change nothing, or whose repetition changes nothing more (deletes ignore a
# missing resource; a router's gateway, a floating IP's port and a quota are set to absolute
# values): safe to send again when the connection failed under them. Not the strict add and
# remove of addresses: a repetition of one that went through fails.
_REPEATABLE = ("find ", "get ", "list ", "delete ", "set gateway ", "clear gateway ",
               "update floating ip ", "update quota ")


def is_repeatable(e: BaseException, what: str) -> bool:
    """Whether the call ``what`` may be sent once more after ``e``: the connection failed
    (refused, reset, a pooled keep-alive connection the server had closed) and repeating
    ``what`` cannot create anything twice."""
    return isinstance(e, ks_exceptions.ConnectFailure) and what.startswith(_REPEATABLE)
