"""The controller's main loop: informers for Pods, Namespaces, KuryrPorts and KuryrNetworks,
the reactor, and the routing of changes to handlers.

Owns start-up order (every informer synced before any handler runs, then every cached object
is reconciled, which is how a restarted controller catches up) and the reporting of a
PermanentError as a Kubernetes Event plus a ``Failed`` status condition. Not here yet: leader
election, the periodic garbage collection, health and metrics endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging

from kuryr import errors, settings
from kuryr.controller import context, networks, ports, reacting
from kuryr.k8s import api, resources, watching
from kuryr.neutron import client

LOG = logging.getLogger(__name__)
_WATCHED = (resources.NAMESPACES, resources.KURYR_NETWORKS, resources.PODS,
            resources.KURYR_PORTS)
# The informer and kind of the object a reactor key names.
_KINDS = {"pod": resources.PODS, "kuryrport": resources.KURYR_PORTS,
          "namespace": resources.NAMESPACES, "kuryrnetwork": resources.KURYR_NETWORKS}


async def run(config: settings.KuryrSettings, *, stop: asyncio.Event,
              ready: asyncio.Event | None = None) -> None:
    """Run the controller until ``stop`` is set; ``ready`` is set once every informer has
    listed. Raises ConfigError."""
    kube = await api.connect(config.kubernetes)
    neutron = client.Neutron.from_settings(config)

    async def handle(key: reacting.Key) -> float | None:
        return await _dispatch(ctx, key)

    async def report(key: reacting.Key, error: errors.PermanentError) -> None:
        await _report(ctx, key, error)

    reactor = reacting.Reactor(handle, on_permanent=report, workers=config.kubernetes.workers)
    ctx = context.Context(config=config, kube=kube, neutron=neutron, reactor=reactor)
    started = asyncio.Event()

    def changed(plural: str, namespace: str, name: str) -> None:
        if started.is_set():
            _route(ctx, plural, namespace, name)

    for resource in _WATCHED:
        ctx.informers[resource.plural] = watching.Informer(
            kube, resource, on_change=functools.partial(changed, resource.plural))
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(i.run(), name=f"watch {p}")
                     for p, i in ctx.informers.items()]
            for informer in ctx.informers.values():
                await informer.synced.wait()
            started.set()
            for plural, informer in ctx.informers.items():
                for namespace, name in list(informer.objects):
                    _route(ctx, plural, namespace, name)
            LOG.info("kuryr controller started: %d pods, %d namespaces",
                     len(ctx.informers["pods"].objects),
                     len(ctx.informers["namespaces"].objects))
            if ready is not None:
                ready.set()
            await stop.wait()
            await reactor.close()
            for task in tasks:
                task.cancel()
    finally:
        await reactor.close()
        neutron.close()
        await kube.close()


def _route(ctx: context.Context, plural: str, namespace: str, name: str) -> None:
    """Which handlers a change of one object concerns."""
    trigger = ctx.reactor.trigger
    if plural == "pods":
        trigger(("pod", namespace, name))
    elif plural == "kuryrports":
        trigger(("kuryrport", namespace, name))
        trigger(("pod", namespace, name))
        trigger(("kuryrnetwork", namespace, namespace))
    elif plural == "namespaces":
        trigger(("namespace", "", name))
    elif plural == "kuryrnetworks":
        trigger(("kuryrnetwork", namespace, name))
        trigger(("namespace", "", namespace))


async def _dispatch(ctx: context.Context, key: reacting.Key) -> float | None:
    kind, namespace, name = key
    if kind == "pod":
        return await ports.handle_pod(ctx, namespace, name)
    if kind == "kuryrport":
        return await ports.handle_port(ctx, namespace, name)
    if kind == "namespace":
        return await networks.handle_namespace(ctx, name)
    if kind == "kuryrnetwork":
        return await networks.handle_network(ctx, namespace, name)
    raise errors.PermanentError(f"no handler for {kind}")


async def _report(ctx: context.Context, key: reacting.Key,
                  error: errors.PermanentError) -> None:
    """A PermanentError as an Event on the object (and on the pod of a KuryrPort) and, on
    kuryr's own objects, a ``Failed`` condition in the status."""
    kind, namespace, name = key
    resource = _KINDS[kind]
    obj = ctx.cached(resource.plural, namespace or None, name)
    if obj is None:
        return
    obj = {"apiVersion": resource.api_version, "kind": resource.kind, **obj}
    reason = type(error).__name__
    await ctx.kube.post_event(obj, reason=reason, message=str(error))
    if kind == "kuryrport":
        pod = ctx.cached("pods", namespace, name)
        if pod is not None:
            await ctx.kube.post_event({"apiVersion": "v1", "kind": "Pod", **pod},
                                      reason=reason, message=str(error))
    if kind in ("kuryrport", "kuryrnetwork"):
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "Failed", "status": "True", "reason": reason,
                     "message": str(error)[:1000], "lastTransitionTime": stamp}
        with contextlib.suppress(errors.NotFoundError):
            await ctx.kube.patch(resource, namespace, name,
                                 {"status": {"conditions": [condition]}}, status=True)
