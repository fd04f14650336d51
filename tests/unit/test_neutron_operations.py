"""The operation label of a Neutron call: few distinct values, no ids or names."""

from __future__ import annotations

import pytest

from kuryr.neutron import operations


@pytest.mark.parametrize(("what", "expected"), [
    ("create port on network 3f2a-11", "create port"),
    ("create 5 ports on network 3f2a-11", "create ports"),
    ("find subnet pool kt-pool", "find subnet pool"),
    ("add subnet 1a to router 2b", "add subnet"),
    ("tag port 8c1e", "tag port"),
    ("list ports", "list ports"),
    ("create network k8s-default-uid", "create network"),
    ("create floating ip on network 9d", "create floating ip"),
    ("list floating ips", "list floating ips"),
    ("delete floating ip 77", "delete floating ip"),
    ("set gateway of router 2b", "set gateway"),
    ("list security groups", "list security groups"),
    ("create rule in security group 1a", "create rule"),
    ("create 12 rules in security group 1a", "create rules"),
    ("create address group kuryr-c1-ag-0f3e", "create address group"),
    ("get address group 5e", "get address group"),
    ("list address groups", "list address groups"),
    ("add addresses to address group 5e", "add addresses"),
    ("remove addresses from address group 5e", "remove addresses"),
    ("delete address group 5e", "delete address group"),
    ("get quota of project fake_project_id", "get quota"),
    ("update quota of project 0c2d", "update quota"),
    ("connect to Neutron", "other"),
])
def test_operation_names_leave_ids_and_names_out(what: str, expected: str) -> None:
    assert operations.operation(what) == expected
