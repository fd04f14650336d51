"""What an observer of Neutron calls is told: the operation a call made, by a name with few
distinct values (no ids, no resource names), its result and its duration. No I/O, no metrics
library: ``kuryr.neutron.client`` calls the observer an entry point hands it."""

from __future__ import annotations

from kuryr import calling

# (operation, result, seconds); result is "ok", "Cancelled" or the kuryr error class name.
Observer = calling.Observer

_WORDS = frozenset({
    "add", "create", "delete", "find", "get", "list", "remove", "tag", "untag", "update",
    "network", "networks", "subnet", "subnets", "pool", "pools", "port", "ports", "router",
    "security", "group", "groups", "rule", "rules", "trunk", "subports", "floating", "ip",
    "ips", "set", "clear", "gateway", "address", "addresses", "quota"})


def operation(what: str) -> str:
    """The operation a call description names: its leading operation words, digits skipped
    (``"create 3 ports on network <id>"`` -> ``"create ports"``)."""
    words: list[str] = []
    for word in what.split():
        if word.isdigit():
            continue
        if word not in _WORDS:
            break
        words.append(word)
    return " ".join(words) or "other"
