"""How Neutron and transport failures become kuryr errors (and keep Neutron's message)."""

import json

import pytest
import requests
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from kuryr import errors
from kuryr.neutron import failures


def _http_error(status: int, kind: str | None, message: str) -> sdk_exceptions.HttpException:
    response = requests.Response()
    response.status_code = status
    body = {"NeutronError": {"type": kind, "message": message, "detail": ""}} if kind else {}
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    response.url = "http://127.0.0.1:9696/v2.0/ports"
    return sdk_exceptions.HttpException(message="Error", response=response, details=message)


@pytest.mark.parametrize("status, kind, expected", [
    (404, "PortNotFound", errors.NotFoundError),
    (409, "OverQuota", errors.QuotaExceededError),
    (409, "IpAddressGenerationFailure", errors.QuotaExceededError),
    (409, "MacAddressInUse", failures.MacAddressInUseError),
    (409, "IpAddressAlreadyAllocated", failures.AddressInUseError),
    (400, "InvalidIpForSubnet", failures.InvalidAddressError),
    (409, None, errors.TemporaryError),  # a revision conflict: try again
    (400, "InvalidInput", errors.PermanentError),
    (403, "PolicyNotAuthorized", errors.PermanentError),
    (500, None, errors.TemporaryError),
    (503, None, errors.TemporaryError),
])
def test_http_failures_are_classified(status: int, kind: str | None,
                                      expected: type[errors.KuryrError]) -> None:
    error = failures.translate(_http_error(status, kind, "the reason"), "create port")
    assert type(error) is expected
    assert "create port" in str(error) and "the reason" in str(error)
    assert str(status) in str(error)


def test_quota_is_permanent_not_temporary() -> None:
    error = failures.translate(_http_error(409, "OverQuota", "Quota exceeded for ports"), "x")
    assert isinstance(error, errors.PermanentError)
    assert not isinstance(error, errors.TemporaryError)
    assert "Quota exceeded for ports" in str(error)


def test_refused_connection_is_temporary_with_a_hint() -> None:
    error = failures.translate(ks_exceptions.ConnectFailure("refused"), "list ports")
    assert isinstance(error, errors.TemporaryError)
    assert "cannot reach Neutron" in str(error)
    assert error.delay > 0


def test_timeouts_are_temporary() -> None:
    assert isinstance(failures.translate(ks_exceptions.ConnectTimeout(), "x"),
                      errors.TemporaryError)
    assert isinstance(failures.translate(sdk_exceptions.ResourceTimeout("slow"), "x"),
                      errors.TemporaryError)


def test_kuryr_errors_pass_through() -> None:
    original = errors.NotFoundError("gone")
    assert failures.translate(original, "x") is original


@pytest.mark.parametrize("status, kind, expected", [
    (400, "AddressesAlreadyExist", failures.AddressesAlreadyInGroupError),
    (404, "AddressesNotFound", failures.AddressesNotInGroupError),
    (409, "AddressGroupInUse", failures.InUseError),
    (409, "SecurityGroupInUse", failures.InUseError),
    (409, "SubnetInUse", failures.InUseError),
    (409, "SecurityGroupRuleExists", failures.RuleExistsError),
    (409, "DuplicateSecurityGroupRuleInPost", errors.PermanentError),
    (404, "AddressGroupNotFound", errors.NotFoundError),
])
def test_faults_callers_branch_on_have_their_own_type(status: int, kind: str,
                                                      expected: type[errors.KuryrError]) -> None:
    error = failures.translate(_http_error(status, kind, "the reason"), "x")
    assert type(error) is expected
    assert isinstance(error, errors.PermanentError) and not isinstance(error, errors.TemporaryError)
    assert kind in str(error) and "the reason" in str(error)


def test_addresses_not_in_a_group_is_no_missing_group() -> None:
    error = failures.translate(_http_error(404, "AddressesNotFound", "not found"), "x")
    assert isinstance(error, errors.ConflictError)
    assert not isinstance(error, errors.NotFoundError)


def test_strict_address_changes_are_never_sent_twice_quotas_are() -> None:
    reset = ks_exceptions.ConnectFailure("reset")
    assert not failures.is_repeatable(reset, "add addresses to address group 1")
    assert not failures.is_repeatable(reset, "remove addresses from address group 1")
    assert not failures.is_repeatable(reset, "create 3 rules in security group 1")
    assert failures.is_repeatable(reset, "update quota of project p")
    assert failures.is_repeatable(reset, "delete address group 1")
