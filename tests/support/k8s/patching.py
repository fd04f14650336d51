"""The three PATCH flavours of the Kubernetes API double, as pure functions on JSON values.

- ``merge``: RFC 7386 JSON merge patch (``application/merge-patch+json``).
- ``json_patch``: RFC 6902 JSON patch (``application/json-patch+json``); a failed ``test``
  and any other failing operation raise ``errors.ApiError(422)``, as the real server answers.
- ``strategic``: strategic merge patch (``application/strategic-merge-patch+json``), treated as
  a merge patch except for the list fields the controller patches, merged by key:
  ``metadata.finalizers`` (a set of strings), ``metadata.ownerReferences`` (by ``uid``),
  ``status.conditions`` (by ``type``), ``spec.containers`` (by ``name``); ``$patch: delete``
  items and ``$deleteFromPrimitiveList/<field>`` directives are honoured there.

The functions never modify their arguments. Which resources accept which flavour is decided by
the server, not here.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.support.k8s import errors

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

# Strategic-merge list fields: path -> merge key (None for a list of primitives merged as a set).
MERGE_KEYS: dict[tuple[str, ...], str | None] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
    ("status", "conditions"): "type",
    ("spec", "containers"): "name",
}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def strategic(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """A strategic merge patch restricted to the list fields named in ``MERGE_KEYS``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in value]
            continue
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif here in MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_list(result.get(key) or [], value, MERGE_KEYS[here])
        else:
            result[key] = strategic(result.get(key), value, here)
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str | None) -> list[Any]:
    merged = copy.deepcopy(current)
    if key is None:
        return merged + [v for v in patch if v not in merged]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise errors.ApiError(422, f"merge key {key!r} missing in a list item: {item!r}")
        index = next((i for i, old in enumerate(merged) if old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.ApiError(422, f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise errors.ApiError(422, f"doc is missing path: {path!r}")
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    node, last = _parent(doc, parts, path)
    if isinstance(node, dict) and last in node:
        return node[last]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node[int(last)]
    raise errors.ApiError(422, f"doc is missing path: {path!r}")


def _remove(doc: Any, path: str) -> Any:
    value = _get(doc, path)
    node, last = _parent(doc, _pointer(path), path)
    if isinstance(node, dict):
        del node[last]
    else:
        del node[int(last)]
    return value


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    if replace:
        _get(doc, path)  # must exist
    node, last = _parent(doc, parts, path)
    if isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    elif isinstance(node, list):
        if last == "-":
            node.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(node):
            if replace:
                node[int(last)] = copy.deepcopy(value)
            else:
                node.insert(int(last), copy.deepcopy(value))
        else:
            raise errors.ApiError(422, f"invalid index in JSON patch path: {path!r}")
    else:
        raise errors.ApiError(422, f"doc is missing path: {path!r}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902; raises ApiError(400) for a body that is no list, 422 when an operation fails."""
    if not isinstance(operations, list):
        raise errors.ApiError(400, "a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.ApiError(422, f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise errors.ApiError(422, f"JSON patch {kind!r} without a value")
        if kind == "add":
            doc = _add(doc, path, op["value"])
        elif kind == "replace":
            doc = _add(doc, path, op["value"], replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            doc = _add(doc, path, _remove(doc, op["from"]))
        elif kind == "copy":
            doc = _add(doc, path, _get(doc, op["from"]))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise errors.ApiError(422, f"testing value {path} failed")
        else:
            raise errors.ApiError(422, f"unknown JSON patch operation: {kind!r}")
    return doc
