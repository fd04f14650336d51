"""The pins the local cloud installs from (shipped in the package) are the ones the repo shows
in ``constraints/``: two copies that must not drift apart."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("shown", "shipped"), [
    ("neutron-29.txt", "neutron-29-constraints.txt"),
    ("octavia-19.txt", "octavia-19-constraints.txt"),
])
def test_the_shipped_constraints_are_the_repos(shown: str, shipped: str) -> None:
    repo = (ROOT / "constraints" / shown).read_text(encoding="utf-8")
    package = (ROOT / "src" / "kuryr" / "cloud" / "data" / shipped).read_text(encoding="utf-8")
    assert repo == package, f"constraints/{shown} and kuryr/cloud/data/{shipped} differ"
