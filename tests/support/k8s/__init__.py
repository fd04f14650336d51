"""A faithful Kubernetes API double for tests, served over real HTTP on 127.0.0.1.

    from tests.support import k8s

    async with k8s.serve(resources=[*k8s.CORE_RESOURCES, k8s.KURYR_PORTS]) as api:
        ...  # point a real client at api.url
        api.fail("/api/v1/pods", status=500, times=2)   # the next 2 requests to that path
        api.drop_watches()                              # end every open watch stream
        api.expire_next_watch()                         # the next watch gets 410 Gone
        api.compact()                                   # every older version is gone

    async with k8s.serve(service_cidr="10.96.0.0/24", endpoint_slices=True) as api:
        ...  # Services get clusterIPs; EndpointSlices follow pods and Services
        api.set_pod_ip("default", "web-1", "10.0.0.5")  # as the kubelet after CNI ADD

This package owns the test-facing API (``serve`` and ``Api``); the semantics live in its
modules: ``registry`` (resources, discovery), ``store`` (objects, versions, lifecycle),
``patching``, ``selectors``, ``watching``, ``server`` (HTTP, faults), ``services`` (Service
defaulting, validation, ClusterIP allocation) and ``endpointslices`` (the EndpointSlice
controller's stand-in). What the double does not do: authentication, admission and validation
beyond metadata and Services, server-side apply, dryRun, field managers, and consistent
pagination snapshots.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from aiohttp import web

from tests.support.k8s import (
    endpointslices,
    registry,
    selectors,
    server,
    services,
    store,
    watching,
)
from tests.support.k8s.registry import (
    CONFIGMAPS,
    CORE_RESOURCES,
    ENDPOINT_SLICES,
    ENDPOINTS,
    EVENTS,
    KURYR_LOAD_BALANCERS,
    KURYR_NETWORK_POLICIES,
    KURYR_NETWORKS,
    KURYR_NODE_POOLS,
    KURYR_PORTS,
    KURYR_RESOURCES,
    LEASES,
    NAMESPACES,
    NETWORK_POLICIES,
    NODES,
    PODS,
    SERVICES,
    Resource,
    crd,
)

__all__ = [
    "CONFIGMAPS", "CORE_RESOURCES", "ENDPOINTS", "ENDPOINT_SLICES", "EVENTS",
    "KURYR_LOAD_BALANCERS", "KURYR_NETWORKS", "KURYR_NETWORK_POLICIES", "KURYR_NODE_POOLS",
    "KURYR_PORTS",
    "KURYR_RESOURCES", "LEASES", "NAMESPACES", "NETWORK_POLICIES", "NODES", "PODS", "SERVICES",
    "Api", "Resource",
    "crd", "serve",
]

Object = store.Object

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class Api:
    """A running double: its ``url``, its state, and the hooks that inject faults."""

    def __init__(self, url: str, state: server.Server) -> None:
        self.url = url
        self._server = state

    @property
    def store(self) -> store.Store:
        """Direct access to objects, e.g. to seed state without HTTP (events still flow)."""
        return self._server.store

    @property
    def registry(self) -> registry.Registry:
        return self._server.registry

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request served, in order."""
        return self._server.requests

    def register(self, resource: Resource) -> None:
        """Serve one more resource from now on, as applying a CRD would."""
        self._server.registry.register(resource)

    def fail(self, path: str | None, *, status: int = 500, times: int | None = 1,
             method: str | None = None, is_watch: bool | None = None) -> None:
        """The next ``times`` requests to ``path`` (None: any path) get ``status`` with a
        Status body; ``times`` None keeps failing until ``clear_faults``."""
        self._server.faults.append(server.Fault(path, status, method, times, 0.0, is_watch))

    def delay(self, path: str | None, seconds: float, *, times: int | None = 1,
              method: str | None = None, is_watch: bool | None = None) -> None:
        """The next ``times`` requests to ``path`` are answered ``seconds`` late."""
        self._server.faults.append(server.Fault(path, None, method, times, seconds, is_watch))

    def clear_faults(self) -> None:
        self._server.faults.clear()

    def drop_watches(self, path: str | None = None, *, abort: bool = False) -> int:
        """End the open watch streams (on ``path`` only, if given): cleanly, or with
        ``abort`` by dropping the connection mid-body. Returns how many were open."""
        return watching.close(self._server.watches, path=path, abort=abort)

    @property
    def open_watches(self) -> int:
        return len(self._server.watches)

    def expire_next_watch(self, times: int = 1) -> None:
        """The next ``times`` watches get an ERROR event with a 410 Gone Status."""
        self._server.expired_watches += times

    def compact(self) -> None:
        """Forget the event log: a watch resuming from any older version gets 410 Gone."""
        self._server.store.compact()

    # -- the kubelet and the controllers ------------------------------------------------------

    def set_pod_ip(self, namespace: str, name: str, ip: str, *,
                   ready: bool = True) -> Object:
        """Report the pod started, as its kubelet does after CNI ADD: through /status (a new
        resourceVersion, a MODIFIED event), ``phase`` Running, ``podIP``, ``podIPs``, and the
        ``Ready`` and ``ContainersReady`` conditions (True when ``ready``; a condition's
        ``lastTransitionTime`` moves only when its status does). Returns the pod."""
        status = "True" if ready else "False"

        def apply(pod: Object) -> Object:
            found = pod.setdefault("status", {})
            found["phase"] = "Running"
            found["podIP"] = ip
            found["podIPs"] = [{"ip": ip}]
            found.setdefault("startTime", store.now())
            conditions = [c for c in found.get("conditions") or [] if isinstance(c, dict)]
            for kind in ("ContainersReady", "Ready"):
                current = next((c for c in conditions if c.get("type") == kind), None)
                if current is None:
                    current = {"type": kind}
                    conditions.append(current)
                if current.get("status") != status:
                    current.update(status=status, lastProbeTime=None,
                                   lastTransitionTime=store.now())
            found["conditions"] = conditions
            return pod

        return self._server.store.patch(registry.PODS, namespace, name, apply, status=True)

    def endpoint_slices(self, namespace: str, service: str) -> list[Object]:
        """The EndpointSlices labelled for ``service`` (whoever manages them), by name."""
        label = f"{endpointslices.SERVICE_NAME}={service}"
        matches = selectors.matcher(ENDPOINT_SLICES.field_labels, labels=label)
        return self._server.store.list(ENDPOINT_SLICES, namespace, matches)[0]


@contextlib.asynccontextmanager
async def serve(resources: Iterable[Resource] | None = None, *, log_size: int = 1000,
                bookmark_interval: float = 1.0,
                namespaces: Iterable[str] = DEFAULT_NAMESPACES,
                service_cidr: str | None = None,
                endpoint_slices: bool = False,
                gone_as_status: bool = False) -> AsyncIterator[Api]:
    """Serve a fresh double on 127.0.0.1 (an ephemeral port) for the duration of the block.

    ``resources`` default to ``CORE_RESOURCES``; ``log_size`` is how many events a watch can
    resume across; ``namespaces`` exist from the start, as on a new cluster. Services are
    always defaulted and validated; with ``service_cidr`` they get clusterIPs from it. With
    ``endpoint_slices`` the EndpointSlice controller's stand-in runs (and EndpointSlices are
    served even if ``resources`` leave them out). A watch from a resourceVersion older than
    the compaction point (``log_size``, ``compact``), or one ``expire_next_watch`` expires,
    gets 410 Gone: as kube-apiserver sends it, an ERROR event in a 200 stream; with
    ``gone_as_status`` as a server that checks the version before it streams answers, an
    HTTP 410 ``Status`` (client-go's reflector lists again on either).
    """
    served = registry.Registry(list(resources or CORE_RESOURCES))
    objects = store.Store(log_size=log_size)
    services.ServiceAdmission(objects, service_cidr).install()
    if endpoint_slices:
        if served.lookup(ENDPOINT_SLICES.group, ENDPOINT_SLICES.version,
                         ENDPOINT_SLICES.plural) is None:
            served.register(ENDPOINT_SLICES)
        endpointslices.Controller(objects).install()
    state = server.Server(served, objects, bookmark_interval=bookmark_interval,
                          is_gone_as_status=gone_as_status)
    for name in namespaces:
        state.store.create(registry.NAMESPACES, None, {"metadata": {"name": name}})
    runner = web.AppRunner(state.app(), handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Api(f"http://127.0.0.1:{port}", state)
    finally:
        watching.close(state.watches)
        await runner.cleanup()
