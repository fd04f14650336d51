"""Label selectors (``kuryr.k8s.selectors``) and the canonical form of security-group rules
(``kuryr.controller.sgrules``), on their own."""

from __future__ import annotations

import pytest

from kuryr import errors
from kuryr.controller import sgrules
from kuryr.k8s import selectors


@pytest.mark.parametrize("selector,labels,expected", [
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"},
     True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"},
     False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchLabels": {"a": "1"},
      "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
])
def test_label_selectors_match_as_the_api_does(selector: dict, labels: dict,
                                               expected: bool) -> None:
    assert selectors.matches(selector, labels) is expected


def test_equal_selectors_have_one_canonical_form() -> None:
    one = {"matchLabels": {"b": "2", "a": "1"},
           "matchExpressions": [{"key": "x", "operator": "In", "values": ["2", "1", "1"]}]}
    other = {"matchExpressions": [{"key": "x", "operator": "In", "values": ["1", "2"]}],
             "matchLabels": {"a": "1", "b": "2"}}
    assert selectors.canonical(one) == selectors.canonical(other)
    assert selectors.canonical({"matchLabels": {}}) == selectors.canonical({}) == {}
    with pytest.raises(errors.PermanentError):
        selectors.matches({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, {})


def test_the_namespace_name_label_is_always_there() -> None:
    labels = selectors.namespace_labels({"metadata": {"name": "x", "labels": {"team": "a"}}})
    assert labels == {"team": "a", "kubernetes.io/metadata.name": "x"}


def test_rules_compare_in_neutrons_canonical_form() -> None:
    assert sgrules.canonical("ingress", "IPv4", "TCP", 1, 65535, "10.1.2.3/8") == \
        sgrules.canonical("ingress", "IPv4", "tcp", None, None, "10.0.0.0/8")
    assert sgrules.canonical("egress", "IPv4", remote_ip_prefix="0.0.0.0/0") == \
        sgrules.canonical("egress", "IPv4")
    assert sgrules.canonical("egress", "IPv6", remote_ip_prefix="::/0").remote_ip_prefix is None
    assert sgrules.of_spec({"direction": "ingress", "ethertype": "IPv4", "protocol": "udp",
                            "port_range_min": 80, "port_range_max": 81},
                           address_group_id="ag") == sgrules.Rule(
        "ingress", "IPv4", "udp", 80, 81, None, None, "ag")
