"""Owner tags: what kuryr writes on Neutron resources and reads back."""

import pytest

from kuryr import errors
from kuryr.neutron import tagging


def test_owner_tags_round_trip() -> None:
    tags = [tagging.KURYR, tagging.cluster("c1"), tagging.owner("cni-container", "abc")]
    assert tagging.value_of(tags, "cni-container") == "abc"
    assert tagging.value_of(tags, "pod") is None
    assert tags[1] == "kuryr-cluster=c1"


def test_tags_neutron_cannot_hold_are_refused() -> None:
    with pytest.raises(errors.PermanentError, match="comma"):
        tagging.owner("x", "a,b")
    with pytest.raises(errors.PermanentError, match="255"):
        tagging.owner("x", "a" * 300)
