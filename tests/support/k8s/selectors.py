"""Label and field selectors of the Kubernetes API double.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``,
comma-separated (all must hold); ``!=`` and ``notin`` also match objects without the label, as
the real server does. Field selectors: ``=``, ``==``, ``!=`` on the field labels the resource
declares (``metadata.name``, ``metadata.namespace``, ``spec.nodeName`` for pods, ...); any other
label is refused with 400, as the real server does. Parsing errors raise ``errors.ApiError``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from tests.support.k8s import errors

Matcher = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


def _split(text: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def parse_labels(text: str | None) -> list[Requirement]:
    """Parse a labelSelector; raises ApiError(400) when it is malformed."""
    requirements: list[Requirement] = []
    for part in _split(text or ""):
        if match := _SET_RE.match(part):
            values = frozenset(v.strip() for v in match.group(4).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(3), values))
        elif match := _EQ_RE.match(part):
            operator = "notin" if match.group(3) == "!=" else "in"
            requirements.append(Requirement(match.group(1), operator,
                                            frozenset({match.group(4)})))
        elif match := _EXISTS_RE.match(part):
            operator = "!exists" if match.group(1) else "exists"
            requirements.append(Requirement(match.group(2), operator))
        else:
            raise errors.ApiError(400, f"unable to parse requirement: {part.strip()!r}")
    return requirements


def field_value(obj: dict[str, Any], path: str) -> str:
    """The string value of a dotted field path ("" when absent), as the server compares it."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_fields(text: str | None, allowed: tuple[str, ...]) -> list[tuple[str, bool, str]]:
    """Parse a fieldSelector into (path, equal, value); 400 on syntax or unsupported labels."""
    terms: list[tuple[str, bool, str]] = []
    for part in (p for p in (text or "").split(",") if p.strip()):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not match:
            raise errors.ApiError(400, f"invalid selector: {part.strip()!r}")
        path, operator, value = match.groups()
        if path not in allowed:
            raise errors.ApiError(400, f'field label not supported: "{path}"')
        terms.append((path, operator != "!=", value))
    return terms


def matcher(resource_fields: tuple[str, ...], *, labels: str | None = None,
            fields: str | None = None) -> Matcher:
    """One predicate for both selectors; raises ApiError(400) when either is malformed."""
    label_terms = parse_labels(labels)
    field_terms = parse_fields(fields, resource_fields)

    def matches(obj: dict[str, Any]) -> bool:
        object_labels = obj.get("metadata", {}).get("labels") or {}
        if not all(term.matches(object_labels) for term in label_terms):
            return False
        return all((field_value(obj, path) == value) == equal
                   for path, equal, value in field_terms)

    return matches
