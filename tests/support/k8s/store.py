"""Storage of the Kubernetes API double: objects by (resource, namespace, name), one global
resourceVersion counter, and a bounded event log that watches resume from.

It owns the object lifecycle the real API server enforces: server-set metadata (``uid``,
``creationTimestamp``, ``generation``, ``resourceVersion``, ``namespace``, ``generateName``),
optimistic concurrency (409 on a stale resourceVersion), the ``/status`` split, finalizers and
``deletionTimestamp``, graceful deletion of pods bound to a node (removed by a second DELETE
with ``gracePeriodSeconds=0``, as the kubelet sends), namespace termination (content deleted,
namespace removed when empty), and ownerReference garbage collection (background: dependents
go right after their last owner). It is synchronous and does no I/O; HTTP and watch streams
live in ``server`` and ``watching``. Failures raise ``errors.ApiError``.

Two hooks let the rest of a cluster take part without owning storage: ``admit`` (defaulting
and validation before an object is stored, e.g. ``services``) and ``after_writes`` (a
controller that reacts once the outermost write is done, e.g. ``endpointslices``).
"""

from __future__ import annotations

import builtins
import collections
import copy
import dataclasses
import datetime
import functools
import random
import uuid
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from tests.support.k8s import errors, registry, selectors

Object = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace, name); namespace "" if cluster-wide
# Called with (resource, current object or None on create, object to store) before a create or
# an update (of the object or of its /status): may change the object in place, or refuse it by
# raising errors.ApiError. What kube-apiserver's defaulting, admission and validation do.
Admission = Callable[[registry.Resource, Object | None, Object], None]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the real server's generateName draws from


@dataclasses.dataclass(frozen=True)
class Event:
    """One change: ``object`` is the state after it (the last state for DELETED)."""

    type: str  # "ADDED", "MODIFIED", "DELETED"
    resource: registry.Resource
    object: Object
    previous: Object | None
    revision: int

    @property
    def namespace(self) -> str:
        return str(self.object["metadata"].get("namespace", ""))


def now(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(resource: registry.Resource, namespace: str | None, name: str) -> Key:
    scope = (namespace or "") if resource.namespaced else ""
    return (resource.group, resource.plural, scope, name)


def _write(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    """A public write: when the outermost one ends, the store's settlers run (see
    ``Store.after_writes``)."""

    def wrapper(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._settle()

    functools.update_wrapper(wrapper, method)
    return wrapper


def _content(resource: registry.Resource, obj: Object) -> Object:
    """What bumps ``generation`` when it changes: all but metadata (and status if split)."""
    ignored = {"metadata", "apiVersion", "kind"} | ({"status"} if resource.has_status else set())
    return {k: v for k, v in obj.items() if k not in ignored}


class Store:
    """Objects and their history; ``subscribe`` to hear every event as it happens."""

    def __init__(self, *, log_size: int = 1000) -> None:
        self.revision = 0
        self._objects: dict[Key, tuple[registry.Resource, Object]] = {}
        self._log: collections.deque[Event] = collections.deque(maxlen=max(1, log_size))
        self._compacted = 0  # the highest revision no longer in the log
        self._subscribers: list[Callable[[Event], None]] = []
        self._admissions: list[Admission] = []
        self._settlers: list[Callable[[], None]] = []
        self._depth = 0  # nesting of public writes in progress
        self._is_settling = False

    # -- hooks: what the rest of a cluster does around its API server ---------------------

    def admit(self, check: Admission) -> None:
        """Run ``check`` on every object about to be created or updated (see ``Admission``)."""
        self._admissions.append(check)

    def after_writes(self, settle: Callable[[], None]) -> None:
        """Call ``settle`` after every outermost write (HTTP or direct), as a controller
        reacting at once would run; the writes ``settle`` makes do not call it again, so it
        must finish its own work (loop until it has nothing left)."""
        self._settlers.append(settle)

    def _settle(self) -> None:
        if self._is_settling:
            return
        self._is_settling = True
        try:
            for settle in list(self._settlers):
                settle()
        finally:
            self._is_settling = False

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for each new event; returns the function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def events_after(self, revision: int) -> list[Event]:
        """Logged events newer than ``revision``; ApiError(410) if some were compacted away."""
        if revision < self._compacted:
            raise errors.gone(f"too old resource version: {revision} ({self._compacted + 1})")
        return [event for event in self._log if event.revision > revision]

    def compact(self) -> None:
        """Forget the whole event log, as etcd compaction does: older versions get 410."""
        self._log.clear()
        self._compacted = self.revision

    def _emit(self, kind: str, resource: registry.Resource, obj: Object,
              previous: Object | None) -> None:
        event = Event(kind, resource, copy.deepcopy(obj), previous, self.revision)
        if len(self._log) == self._log.maxlen:
            self._compacted = self._log[0].revision
        self._log.append(event)
        for callback in list(self._subscribers):
            callback(event)

    # -- reads ----------------------------------------------------------------------------

    def get(self, resource: registry.Resource, namespace: str | None, name: str) -> Object:
        """The object, a copy; ApiError(404) when absent."""
        found = self._objects.get(_key(resource, namespace, name))
        if found is None:
            raise errors.not_found(resource.qualified, name)
        return copy.deepcopy(found[1])

    def list(self, resource: registry.Resource, namespace: str | None,
             matches: selectors.Matcher | None = None) -> tuple[list[Object], int]:
        """Matching objects (all namespaces when ``namespace`` is None), sorted by key."""
        items = [copy.deepcopy(obj) for key, (_, obj) in sorted(self._objects.items())
                 if key[:2] == (resource.group, resource.plural)
                 and (not namespace or key[2] == namespace)
                 and (matches is None or matches(obj))]
        return items, self.revision

    def view(self, resource: registry.Resource, namespace: str | None) -> builtins.list[Object]:
        """The stored objects themselves, not copies, sorted by key: for the double's own
        controllers, which must not change them."""
        return [obj for key, (_, obj) in sorted(self._objects.items())
                if key[:2] == (resource.group, resource.plural)
                and (not namespace or key[2] == namespace)]

    def _uids(self) -> set[str]:
        return {obj["metadata"]["uid"] for _, obj in self._objects.values()}

    # -- writes ---------------------------------------------------------------------------

    @_write
    def create(self, resource: registry.Resource, namespace: str | None, body: Any) -> Object:
        """Store a new object with server-set metadata; 409 AlreadyExists, 404 for a missing
        namespace, 403 for a terminating one, 400/422 for a malformed body."""
        if not isinstance(body, dict):
            raise errors.ApiError(400, "the body of the request is not an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("resourceVersion"):
            raise errors.ApiError(500, "resourceVersion should not be set on objects to be "
                                  "created")
        if resource.namespaced:
            if meta.get("namespace") and namespace and meta["namespace"] != namespace:
                raise errors.ApiError(400, "the namespace of the provided object does not "
                                      "match the namespace sent on the request")
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise errors.ApiError(400, "the server could not find the requested resource")
            self._check_namespace(namespace)
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.ApiError(422, f"{resource.kind} is invalid: metadata.name: "
                                      "Required value: name or generateName is required")
            suffix = "".join(random.choice(_NAME_CHARS) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        key = _key(resource, namespace, meta["name"])
        if key in self._objects:
            raise errors.already_exists(resource.qualified, meta["name"])
        for server_owned in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(server_owned, None)
        obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
        if resource.has_status:
            obj.pop("status", None)  # status is written through /status only
        if resource is registry.NAMESPACES or resource.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        elif resource.plural == "pods" and not resource.group:
            obj["status"] = {"phase": "Pending"}
        for admit in self._admissions:
            admit(resource, None, obj)
        self.revision += 1
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1,
                    resourceVersion=str(self.revision))
        self._objects[key] = (resource, obj)
        self._emit("ADDED", resource, obj, None)
        return copy.deepcopy(obj)

    def _check_namespace(self, namespace: str) -> None:
        found = self._objects.get(("", "namespaces", "", namespace))
        if found is None:
            raise errors.not_found("namespaces", namespace)
        if found[1]["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(403, f"unable to create new content in namespace {namespace} "
                                  "because it is being terminated", reason="Forbidden")

    @_write
    def replace(self, resource: registry.Resource, namespace: str | None, name: str,
                body: Any, *, status: bool = False) -> Object:
        """PUT: the whole object (or only its status with ``status``); 409 on a stale
        resourceVersion, 400 when the name or namespace disagrees with the URL."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise errors.ApiError(400, "the body of the request is not an object")
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise errors.ApiError(400, "the name of the object "
                                  f"({meta['name']}) does not match the name on the URL ({name})")
        if resource.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.ApiError(400, "the namespace of the provided object does not match "
                                  "the namespace sent on the request")
        old = self.get(resource, namespace, name)
        return self._update(resource, old, body, status=status)

    @_write
    def patch(self, resource: registry.Resource, namespace: str | None, name: str,
              apply: Callable[[Object], Any], *, status: bool = False) -> Object:
        """PATCH: ``apply`` turns the current object into the new one (see ``patching``)."""
        old = self.get(resource, namespace, name)
        new = apply(copy.deepcopy(old))
        if not isinstance(new, dict) or not isinstance(new.get("metadata", {}), dict):
            raise errors.ApiError(422, "the patched object is not an object")
        new_meta = new.get("metadata") or {}
        if new_meta.get("name", name) != name:
            raise errors.ApiError(422, f"{resource.kind} is invalid: metadata.name: the name "
                                  "of an object cannot be changed")
        return self._update(resource, old, new, status=status)

    def _update(self, resource: registry.Resource, old: Object, body: Object, *,
                status: bool) -> Object:
        old_meta = old["metadata"]
        wanted_version = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_version and wanted_version != old_meta["resourceVersion"]:
            raise errors.conflict(resource.qualified, old_meta["name"])
        if status:
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new.setdefault("metadata", {})
            if resource.has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"]
        for server_owned in ("name", "namespace", "uid", "creationTimestamp", "generation",
                             "deletionTimestamp", "deletionGracePeriodSeconds",
                             "resourceVersion"):
            meta.pop(server_owned, None)
            if server_owned in old_meta:
                meta[server_owned] = old_meta[server_owned]
        new["apiVersion"], new["kind"] = resource.api_version, resource.kind
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.ApiError(422, f"{resource.kind} {old_meta['name']!r} is invalid: "
                                      "metadata.finalizers: Forbidden: no new finalizers can "
                                      "be added if the object is being deleted")
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        for admit in self._admissions:
            admit(resource, old, new)
        if new == old:
            return old  # a no-op write: no new resourceVersion, no event
        if _content(resource, new) != _content(resource, old):
            meta["generation"] = old_meta.get("generation", 1) + 1
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        key = _key(resource, meta.get("namespace"), meta["name"])
        self._objects[key] = (resource, new)
        self._emit("MODIFIED", resource, new, old)
        if self._is_removable(resource, new):
            return self._remove(key)
        return copy.deepcopy(new)

    # -- deletion -------------------------------------------------------------------------

    @_write
    def delete(self, resource: registry.Resource, namespace: str | None, name: str, *,
               propagation: str | None = None, grace: int | None = None,
               preconditions: dict[str, Any] | None = None) -> Object:
        """DELETE: removes the object, or marks it (``deletionTimestamp``) while finalizers,
        a pod's grace period or a namespace's content remain; 404, 409 on failed
        preconditions. Returns the object's last state."""
        obj = self.get(resource, namespace, name)
        meta = obj["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta.get(field):
                raise errors.ApiError(409, f"Precondition failed: {field}: {wanted}, "
                                      f"object {field}: {meta.get(field)}", reason="Conflict")
        key = _key(resource, namespace, name)
        cascade = propagation != "Orphan"
        is_namespace = resource.plural == "namespaces" and not resource.group
        graceful = (resource.plural == "pods" and not resource.group
                    and bool(obj.get("spec", {}).get("nodeName")) and grace != 0)
        if not graceful and not meta.get("finalizers") and not is_namespace:
            return self._remove(key, cascade=cascade)
        updated = copy.deepcopy(obj)
        new_meta = updated["metadata"]
        if graceful:
            seconds = grace if grace is not None else int(
                obj.get("spec", {}).get("terminationGracePeriodSeconds", 30))
            if "deletionTimestamp" not in meta or meta.get("deletionGracePeriodSeconds",
                                                            0) > seconds:
                new_meta["deletionTimestamp"] = now(seconds)
                new_meta["deletionGracePeriodSeconds"] = seconds
        else:
            new_meta.setdefault("deletionTimestamp", now())
            new_meta["deletionGracePeriodSeconds"] = 0
        if is_namespace:
            updated.setdefault("status", {})["phase"] = "Terminating"
        if updated != obj:
            self.revision += 1
            new_meta["resourceVersion"] = str(self.revision)
            self._objects[key] = (resource, updated)
            self._emit("MODIFIED", resource, updated, obj)
        if is_namespace:
            for content_key, (content_resource, _) in list(self._objects.items()):
                if content_key[2] == name and content_key in self._objects:
                    self.delete(content_resource, name, content_key[3])
        if key in self._objects and self._is_removable(resource, self._objects[key][1]):
            return self._remove(key, cascade=cascade)
        return copy.deepcopy(self._objects[key][1]) if key in self._objects else updated

    @_write
    def delete_collection(self, resource: registry.Resource, namespace: str | None,
                          matches: selectors.Matcher | None = None, *,
                          propagation: str | None = None,
                          grace: int | None = None) -> builtins.list[Object]:
        """DELETE on a collection: every matching object, as single deletes would."""
        items, _ = self.list(resource, namespace, matches)
        done = []
        for item in items:
            meta = item["metadata"]
            if _key(resource, meta.get("namespace"), meta["name"]) in self._objects:
                done.append(self.delete(resource, meta.get("namespace"), meta["name"],
                                        propagation=propagation, grace=grace))
        return done

    def _is_removable(self, resource: registry.Resource, obj: Object) -> bool:
        meta = obj["metadata"]
        if not meta.get("deletionTimestamp") or meta.get("finalizers"):
            return False
        if meta.get("deletionGracePeriodSeconds"):
            return False  # a pod waiting for its kubelet
        if resource.plural == "namespaces" and not resource.group:
            return not any(key[2] == meta["name"] for key in self._objects)
        return True

    def _remove(self, key: Key, *, cascade: bool = True) -> Object:
        resource, obj = self._objects.pop(key)
        self.revision += 1
        previous = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self._emit("DELETED", resource, obj, previous)
        if cascade:
            self._collect_dependents(obj["metadata"]["uid"])
        namespace = obj["metadata"].get("namespace")
        if namespace:
            found = self._objects.get(("", "namespaces", "", namespace))
            if found and self._is_removable(found[0], found[1]):
                self._remove(("", "namespaces", "", namespace))
        return obj

    def _collect_dependents(self, owner_uid: str) -> None:
        """Garbage collection: delete objects whose owners are now all gone."""
        for key, (resource, obj) in list(self._objects.items()):
            owners = {ref.get("uid") for ref in obj["metadata"].get("ownerReferences") or []}
            if owner_uid not in owners or key not in self._objects:
                continue
            if not owners & self._uids() and not obj["metadata"].get("deletionTimestamp"):
                self.delete(resource, key[2] or None, key[3])
