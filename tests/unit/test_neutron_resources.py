"""What callers hand the Neutron facade: canonical CIDRs as Neutron 29 stores them in address
groups (the forms below are Neutron's answers, measured), and rule specs that compare as
Neutron compares rules."""

from __future__ import annotations

import pytest

from kuryr import errors
from kuryr.neutron import address_groups, resources


@pytest.mark.parametrize(("given", "stored"), [
    ("10.0.0.5", "10.0.0.5/32"),
    ("10.0.0.5/32", "10.0.0.5/32"),
    ("10.2.3.4/24", "10.2.3.0/24"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("FD00:0:0::2/128", "fd00::2/128"),
    ("fd01::5/64", "fd01::/64"),
    ("2001:DB8::0:1:0:0:0/96", "2001:db8:0:0:1::/96"),
    ("2001:db8:0:0:1:0:0:1/128", "2001:db8::1:0:0:1/128"),
    ("::ffff:10.0.0.1/128", "::ffff:10.0.0.1/128"),
    ("::10.0.0.1/128", "::10.0.0.1/128"),
    ("64:ff9b::10.0.0.1/128", "64:ff9b::a00:1/128"),
    ("0:0::1/128", "::1/128"),
])
def test_canonical_cidr_is_what_neutron_stores(given: str, stored: str) -> None:
    assert resources.canonical_cidr(given) == stored


def test_canonical_addresses_deduplicate_and_refuse_what_is_no_address() -> None:
    same = ["10.0.0.5", "10.0.0.5/32", "10.0.0.5/255.255.255.255"]
    assert address_groups.canonical_addresses(same) == ["10.0.0.5/32"]
    with pytest.raises(errors.PermanentError, match="'nope' is not an IP address"):
        address_groups.canonical_addresses(["10.0.0.1", "nope"])


def test_rule_specs_compare_without_their_description() -> None:
    a = resources.RuleSpec(protocol="tcp", port_range_min=80, port_range_max=80,
                           remote_address_group_id="ag", description="policy a")
    b = resources.RuleSpec(protocol="tcp", port_range_min=80, port_range_max=80,
                           remote_address_group_id="ag", description="policy b")
    assert a == b and len({a, b}) == 1
    assert a != resources.RuleSpec(protocol="tcp", port_range_min=80, port_range_max=80)
