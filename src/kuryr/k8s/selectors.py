"""Kubernetes label selectors (``metav1.LabelSelector``): matching labels, and one canonical
form of a selector so that equal selectors written differently are known to be equal.

Pure functions on the JSON shapes the API serves; no I/O. ``None`` is not a selector here
(callers say what an absent selector means); ``{}`` selects everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kuryr import errors

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API


def matches(selector: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """Whether ``labels`` satisfy ``selector``: every matchLabels pair and every
    matchExpressions requirement (In, NotIn, Exists, DoesNotExist). Raises PermanentError on
    an unknown operator."""
    labels = labels or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if operator == "In":
            if key not in labels or labels[key] not in values:
                return False
        elif operator == "NotIn":
            if key in labels and labels[key] in values:
                return False
        elif operator == "Exists":
            if key not in labels:
                return False
        elif operator == "DoesNotExist":
            if key in labels:
                return False
        else:
            raise errors.PermanentError(f"label selector operator {operator!r} is unknown")
    return True


def canonical(selector: Mapping[str, Any]) -> dict[str, Any]:
    """The selector with sorted labels, expressions and values, and no empty parts: two
    selectors that select the same way have the same canonical form (and JSON)."""
    found: dict[str, Any] = {}
    match_labels = selector.get("matchLabels") or {}
    if match_labels:
        found["matchLabels"] = {k: match_labels[k] for k in sorted(match_labels)}
    expressions = []
    for expression in selector.get("matchExpressions") or []:
        entry: dict[str, Any] = {"key": expression.get("key"),
                                 "operator": expression.get("operator")}
        if expression.get("operator") in ("In", "NotIn"):
            entry["values"] = sorted(set(expression.get("values") or []))
        expressions.append(entry)
    if expressions:
        found["matchExpressions"] = sorted(expressions, key=lambda e: (
            str(e["key"]), str(e["operator"]), e.get("values", [])))
    return found


def namespace_labels(namespace: Mapping[str, Any]) -> dict[str, str]:
    """A namespace's labels, with ``kubernetes.io/metadata.name`` as the API server sets it."""
    meta = namespace.get("metadata") or {}
    return {**(meta.get("labels") or {}), NAMESPACE_NAME_LABEL: str(meta.get("name"))}
