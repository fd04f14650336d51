"""How Octavia and transport failures become kuryr errors: Octavia's 409s told apart (a busy
load balancer is temporary, a duplicate is not), its faultstring kept, its debuginfo and URLs
left out. The errors are the SDK's own, raised from real HTTP responses."""

from __future__ import annotations

import json

import pytest
import requests
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from kuryr import errors
from kuryr.octavia import failures

URL = "http://127.0.0.1:9876/v2/lbaas/listeners?token=secret-token"


def _octavia_error(status: int, faultstring: str) -> sdk_exceptions.HttpException:
    """What the SDK raises for an Octavia error answer (Octavia's WSME fault body)."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"faultcode": "Client" if status < 500 else "Server",
                                    "faultstring": faultstring,
                                    "debuginfo": "Traceback (most recent call last): ..."}
                                   ).encode()
    response.headers["Content-Type"] = "application/json"
    response.url = URL
    with pytest.raises(sdk_exceptions.HttpException) as raised:
        sdk_exceptions.raise_from_response(response)
    return raised.value


@pytest.mark.parametrize("status, faultstring, expected", [
    # A load balancer busy with another change: try again shortly.
    (409, "Load Balancer 4b1c is immutable and cannot be updated.", errors.TemporaryError),
    (409, "Invalid state PENDING_DELETE of loadbalancer resource 4b1c", errors.TemporaryError),
    # Conflicts retrying will not fix.
    (409, "Another Listener on this Load Balancer is already using protocol TCP and "
          "protocol_port 80", errors.PermanentError),
    (409, "Another member on this pool is already using ip 10.0.0.5 on protocol_port 80",
     errors.PermanentError),
    (409, "This listener already has a default pool", errors.PermanentError),
    (409, "The VIP IP address is already in use: 10.0.0.50", errors.PermanentError),
    (409, "Flavor 7a is in use and cannot be modified.", errors.PermanentError),
    (404, "Load Balancer 4b1c not found.", errors.NotFoundError),
    (403, "Quota has been met for resources: Member", errors.QuotaExceededError),
    (403, "Policy does not allow this request to be performed.", errors.PermanentError),
    (400, "Validation failure: persistence_timeout and persistence_granularity is only for "
          "UDP protocol pools.", errors.PermanentError),
    (501, "Provider 'ovn' does not support a requested option: OVN provider does not "
          "support HTTP protocol", errors.PermanentError),
    (500, "An unknown exception occurred.", errors.TemporaryError),
    (503, "Provider 'ovn' is not available.", errors.TemporaryError),
    (408, "Request timed out", errors.TemporaryError),
    (429, "Too many requests", errors.TemporaryError),
])
def test_http_failures_are_classified(status: int, faultstring: str,
                                      expected: type[errors.KuryrError]) -> None:
    error = failures.translate(_octavia_error(status, faultstring), "create listener on x")
    assert type(error) is expected
    text = str(error)
    assert text.startswith("create listener on x: Octavia answered") and str(status) in text
    assert faultstring in text
    assert "Traceback" not in text and "secret-token" not in text and "9876" not in text


def test_a_busy_load_balancer_is_retried_soon() -> None:
    error = failures.translate(
        _octavia_error(409, "Load Balancer 4b1c is immutable and cannot be updated."), "x")
    assert isinstance(error, errors.TemporaryError)
    assert 0 < error.delay <= 1


def test_a_duplicate_is_permanent_not_temporary() -> None:
    error = failures.translate(
        _octavia_error(409, "This pool already has a health monitor"), "x")
    assert isinstance(error, errors.PermanentError)
    assert not isinstance(error, errors.TemporaryError)


def test_the_sdk_raises_the_conflict_class() -> None:
    """The 409 is the SDK's ConflictException: the mapping must not rely on HttpException's
    base class alone."""
    raised = _octavia_error(409, "Load Balancer 4b1c is immutable and cannot be updated.")
    assert isinstance(raised, sdk_exceptions.ConflictException)
    assert isinstance(_octavia_error(404, "gone"), sdk_exceptions.NotFoundException)


def test_refused_connection_is_temporary_with_a_hint() -> None:
    error = failures.translate(ks_exceptions.ConnectFailure("refused"), "list load balancers")
    assert isinstance(error, errors.TemporaryError)
    assert "cannot reach Octavia" in str(error) and "kuryr cloud status" in str(error)
    assert error.delay > 0


@pytest.mark.parametrize("exception", [
    ks_exceptions.ConnectTimeout(),
    ks_exceptions.DiscoveryFailure("no version"),
    sdk_exceptions.ServiceDiscoveryException("no endpoint"),
    sdk_exceptions.ResourceTimeout("slow"),
    ks_exceptions.RetriableConnectionFailure("reset"),
    ConnectionResetError("reset by peer"),
])
def test_transport_failures_are_temporary(exception: BaseException) -> None:
    assert isinstance(failures.translate(exception, "x"), errors.TemporaryError)


def test_sdk_and_unexpected_errors_are_permanent() -> None:
    assert type(failures.translate(sdk_exceptions.SDKException("bad"), "x")) is \
        errors.PermanentError
    error = failures.translate(ValueError("odd"), "x")
    assert type(error) is errors.PermanentError and "ValueError" in str(error)


def test_kuryr_errors_pass_through() -> None:
    original = errors.NotFoundError("gone")
    assert failures.translate(original, "x") is original


@pytest.mark.parametrize("what, repeatable", [
    ("get load balancer 4b1c", True),
    ("get status of load balancer 4b1c", True),
    ("list members of pool 7a", True),
    ("delete load balancer 4b1c", True),
    ("create load balancer kt", False),
    ("create listener TCP/80 on load balancer 4b1c", False),
    ("set 2 members of pool 7a", False),
    ("update pool 7a", False),
])
def test_only_calls_that_create_nothing_are_sent_again(what: str, repeatable: bool) -> None:
    assert failures.is_repeatable(ks_exceptions.ConnectFailure("reset"), what) is repeatable
    assert not failures.is_repeatable(ks_exceptions.ConnectTimeout(), what)
    assert not failures.is_repeatable(
        _octavia_error(503, "Provider 'ovn' is not available."), what)
