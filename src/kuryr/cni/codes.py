"""CNI error codes and the one mapping from kuryr's error family to them.

Codes below 100 are the SPEC's well-known ones; 100 and up are kuryr's own. Every error carries a
message a person can act on (``msg``) and, where useful, ``details``.
"""

from __future__ import annotations

from kuryr import errors

# The SPEC's well-known codes.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51

# kuryr's own.
INTERNAL = 100
NEUTRON_UNAVAILABLE = 101
NEUTRON_REJECTED = 102
QUOTA_EXCEEDED = 103
NETNS_NOT_FOUND = 104
BINDING_FAILED = 105
CHECK_MISMATCH = 106
ADDRESS_IN_USE = 107  # a static IP or MAC asked for that another port holds


class CniError(errors.KuryrError):
    """A failure as the runtime sees it: a CNI error code, a message and optional details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_wire(self, cni_version: str) -> dict[str, object]:
        wire: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            wire["details"] = self.details
        return wire


def from_exception(e: BaseException) -> CniError:
    """The CNI error for any exception raised while serving a request."""
    if isinstance(e, CniError):
        return e
    text = str(e)
    if isinstance(e, errors.NamespaceNotFoundError):
        return CniError(NETNS_NOT_FOUND, text,
                        "the container's network namespace (CNI_NETNS) must exist during ADD "
                        "and CHECK")
    if isinstance(e, errors.QuotaExceededError):
        return CniError(QUOTA_EXCEEDED, text,
                        "raise the Neutron quota (openstack quota set --ports N PROJECT) or "
                        "free addresses on the subnet")
    if isinstance(e, errors.ConfigError):
        return CniError(INVALID_CONFIG, text)
    if isinstance(e, errors.BindingError):
        return CniError(BINDING_FAILED, text,
                        "check Open vSwitch on this host (kuryr cloud status, ovs-vsctl show)")
    if isinstance(e, errors.TemporaryError):
        return CniError(NEUTRON_UNAVAILABLE, text,
                        "Neutron (or OVN) did not answer in time; check it and retry")
    if isinstance(e, errors.PermanentError):
        return CniError(NEUTRON_REJECTED, text)
    return CniError(INTERNAL, f"kuryr internal error: {type(e).__name__}: {e}",
                    "this is a bug; the daemon's log has the traceback")
