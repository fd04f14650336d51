"""How the controller tells users that something failed: an Event on the object (and on
what the user made, for kuryr's own objects: the pod of a KuryrPort, the NetworkPolicy of a
KuryrNetworkPolicy) and, on kuryr's own objects, a ``Failed`` condition in the status. The
one mechanism for every handler's errors (``running`` for PermanentErrors, ``policies`` for
quota refusals it keeps retrying)."""

from __future__ import annotations

import contextlib
import datetime

from kuryr import errors
from kuryr.controller import context
from kuryr.k8s import resources

# The kinds of kuryr's own objects (which get the condition), and of what their user made.
OWN = {"kuryrport": resources.KURYR_PORTS, "kuryrnetwork": resources.KURYR_NETWORKS,
       "kuryrloadbalancer": resources.KURYR_LOAD_BALANCERS,
       "kuryrnetworkpolicy": resources.KURYR_NETWORK_POLICIES}
USERS = {"kuryrport": resources.PODS, "kuryrnetworkpolicy": resources.NETWORK_POLICIES}


async def report(ctx: context.Context, resource: resources.Resource, namespace: str,
                 name: str, error: errors.KuryrError) -> None:
    """Report ``error`` on the cached object ``resource`` ``namespace/name`` (nothing when
    it is not cached)."""
    kind = resource.kind.lower()
    obj = ctx.cached(resource.plural, namespace or None, name)
    if obj is None:
        return
    reason, message = type(error).__name__, str(error)
    await ctx.kube.post_event({"apiVersion": resource.api_version, "kind": resource.kind,
                               **obj}, reason=reason, message=message)
    user = USERS.get(kind)
    owner = ctx.cached(user.plural, namespace, name) if user is not None else None
    if user is not None and owner is not None:
        await ctx.kube.post_event({"apiVersion": user.api_version, "kind": user.kind,
                                   **owner}, reason=reason, message=message)
    if kind in OWN:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "Failed", "status": "True", "reason": reason,
                     "message": message[:1000], "lastTransitionTime": stamp}
        with contextlib.suppress(errors.NotFoundError):
            await ctx.kube.patch(resource, namespace, name,
                                 {"status": {"conditions": [condition]}}, status=True)
