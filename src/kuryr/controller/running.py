"""The controller's main loop: informers for Pods, Namespaces, Nodes, KuryrPorts,
KuryrNetworks and KuryrNodePools (and, with ``[kubernetes] service_subnet``, Services,
EndpointSlices and KuryrLoadBalancers, with an Octavia client), the reactor, the routing of
changes to handlers, the port pool (and its publication to the nodes) and the periodic
garbage collection.

Owns start-up order (every informer synced before any handler runs; then the port pool is read
back from Neutron (``pooling``); then every cached object is reconciled, which is how a
restarted controller catches up; then, every ``[kubernetes] gc_interval``, garbage collection
(``collecting``)) and the reporting of a PermanentError as a Kubernetes Event plus a
``Failed`` status condition; acting only while leading (``leading``), with health and metrics
served throughout (``observing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from kuryr import errors, settings
from kuryr.controller import (
    activating,
    addressgroups,
    collecting,
    context,
    leading,
    loadbalancers,
    networks,
    nodepools,
    observing,
    podgroups,
    policies,
    pooling,
    ports,
    reacting,
    reporting,
    servicegroups,
    services,
)
from kuryr.k8s import api, resources, watching
from kuryr.neutron import client, connecting
from kuryr.octavia import client as octavia_client
from kuryr.pools import nodes

LOG = logging.getLogger(__name__)
_WATCHED = (resources.NAMESPACES, resources.NODES, resources.KURYR_NETWORKS, resources.PODS,
            resources.KURYR_PORTS, resources.KURYR_NODE_POOLS)
_SERVICES_WATCHED = (resources.SERVICES, resources.ENDPOINT_SLICES,
                     resources.KURYR_LOAD_BALANCERS)
_POLICIES_WATCHED = (resources.NETWORK_POLICIES, resources.KURYR_NETWORK_POLICIES)
_POOLS: reacting.Key = ("pools", "", "")  # keeping the port pools: one key for all
_SERVICE_RULES: reacting.Key = ("servicerules", "", "")  # the Service security group's rules
_ADDRESS_GROUPS: reacting.Key = ("addressgroups", "", "")  # every address group's members
# The informer and kind of the object a reactor key names.
_KINDS = {"pod": resources.PODS, "kuryrport": resources.KURYR_PORTS,
          "namespace": resources.NAMESPACES, "kuryrnetwork": resources.KURYR_NETWORKS,
          "service": resources.SERVICES, "kuryrloadbalancer": resources.KURYR_LOAD_BALANCERS,
          "networkpolicy": resources.NETWORK_POLICIES,
          "kuryrnetworkpolicy": resources.KURYR_NETWORK_POLICIES}


async def run(config: settings.KuryrSettings, *, stop: asyncio.Event,
              ready: asyncio.Event | None = None) -> None:
    """Run the controller until ``stop`` is set: serve health and metrics, and act while
    holding the Lease (``[kubernetes] leader_election``; else at once). Each term as leader
    starts from a full list, so whatever changed while no one led is reconciled. ``ready`` is
    set once every informer has listed. Raises ConfigError."""
    kubernetes = config.kubernetes
    kube = await api.connect(kubernetes)
    metrics = observing.Metrics()
    elector = leading.Elector(kube, kubernetes) if kubernetes.leader_election else None
    synced = asyncio.Event()

    def is_ready() -> bool:
        if synced.is_set() or elector is None:
            return synced.is_set()
        # A follower is ready to take over while the API answers it.
        return (not elector.is_leader
                and time.monotonic() - elector.last_contact < kubernetes.lease_duration)

    try:
        async with observing.serving(metrics, host=kubernetes.health_host,
                                     port=kubernetes.health_port, is_ready=is_ready):
            if elector is None:
                await _act(config, kube, metrics, stop=stop, synced=synced, ready=ready)
                return
            while await elector.acquire(stop):
                metrics.is_leader.set(1)
                leave = asyncio.Event()
                async with asyncio.TaskGroup() as group:
                    group.create_task(elector.hold(stop, leave), name="hold lease")
                    relay = group.create_task(_relay(stop, leave), name="relay stop")
                    try:
                        await _act(config, kube, metrics, stop=leave, synced=synced,
                                   ready=ready)
                    finally:
                        relay.cancel()
                metrics.is_leader.set(0)
                synced.clear()
    finally:
        if elector is not None:
            await elector.release()
        await kube.close()


async def _relay(stop: asyncio.Event, leave: asyncio.Event) -> None:
    await stop.wait()
    leave.set()


async def _act(config: settings.KuryrSettings, kube: api.Kube, metrics: observing.Metrics, *,
               stop: asyncio.Event, synced: asyncio.Event,
               ready: asyncio.Event | None) -> None:
    """Lead until ``stop`` is set: list and watch, reconcile every object, react."""
    neutron = client.Neutron.from_settings(config, observer=metrics.observe_neutron)
    with_services = bool(config.kubernetes.service_subnet)
    with_policy = config.kubernetes.network_policy
    octavia = None
    if with_services:
        octavia = octavia_client.Octavia(
            connecting.connect(config.neutron,
                               load_balancer_endpoint=config.octavia.endpoint_override),
            base_tags=neutron.base_tags, observer=metrics.observe_octavia)

    async def handle(key: reacting.Key) -> float | None:
        try:
            delay = await _dispatch(ctx, key)
        except Exception as e:
            metrics.observe_reconcile(key[0], type(e).__name__)
            raise
        metrics.observe_reconcile(key[0], "ok" if delay is None else "requeued")
        return delay

    async def report(key: reacting.Key, error: errors.PermanentError) -> None:
        await _report(ctx, key, error)

    kubernetes = config.kubernetes
    reactor = reacting.Reactor(handle, on_permanent=report, workers=kubernetes.workers)
    active_ports = activating.ActivePorts(neutron, reactor.trigger,
                                          interval=kubernetes.port_active_poll)
    pool = nodes.NodePools(neutron, size=kubernetes.pool_size, batch=kubernetes.pool_batch,
                           busy=lambda: len(active_ports) > 0,
                           on_change=lambda node: reactor.trigger(("nodepool", "", node)))
    ctx = context.Context(config=config, kube=kube, neutron=neutron, reactor=reactor,
                          metrics=metrics, pool=pool, active_ports=active_ports,
                          octavia=octavia)
    metrics.pool_ready.set_function(pool.total)
    metrics.ports_waiting_active.set_function(lambda: len(active_ports))
    started = asyncio.Event()

    def changed(plural: str, namespace: str, name: str) -> None:
        if started.is_set():
            _route(ctx, plural, namespace, name)

    for resource in (*_WATCHED, *(_SERVICES_WATCHED if with_services else ()),
                     *(_POLICIES_WATCHED if with_policy else ())):
        ctx.informers[resource.plural] = watching.Informer(
            kube, resource, on_change=functools.partial(changed, resource.plural))
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(i.run(), name=f"watch {p}")
                     for p, i in ctx.informers.items()]
            for informer in ctx.informers.values():
                await informer.synced.wait()
            if not await pooling.start(ctx, stop) or (
                    (with_services or with_policy)
                    and not await _make_cluster_groups(ctx, stop)):
                for task in tasks:
                    task.cancel()
                return
            started.set()
            for plural, informer in ctx.informers.items():
                for namespace, name in list(informer.objects):
                    _route(ctx, plural, namespace, name)
            if with_services or with_policy:
                ctx.reactor.trigger(_SERVICE_RULES)
            if with_policy:
                ctx.reactor.trigger(_ADDRESS_GROUPS)
            LOG.info("kuryr controller acting: %d pods, %d namespaces",
                     len(ctx.informers["pods"].objects),
                     len(ctx.informers["namespaces"].objects))
            tasks.append(group.create_task(active_ports.run(), name="wait for ACTIVE"))
            if kubernetes.gc_interval > 0:
                tasks.append(group.create_task(collecting.collect_periodically(
                    ctx, interval=kubernetes.gc_interval), name="gc"))
            synced.set()
            if ready is not None:
                ready.set()
            await stop.wait()
            await reactor.close()
            for task in tasks:
                task.cancel()
    finally:
        await reactor.close()
        await pool.close()
        neutron.close()
        if octavia is not None:
            octavia.close()


async def _make_cluster_groups(ctx: context.Context, stop: asyncio.Event) -> bool:
    """Find or make the cluster's security groups before any pod port is placed (the
    Service group, and with NetworkPolicy the allow-all ones), and give the Service group to
    the pod ports that lack it; retried until it works or ``stop`` is set (False)."""
    delay = 1.0
    while not stop.is_set():
        try:
            await servicegroups.ensure_group(ctx)
            if podgroups.is_on(ctx):
                await podgroups.ensure_allow_groups(ctx)
            await servicegroups.adopt_ports(ctx)
            return True
        except errors.KuryrError as e:
            LOG.warning("cannot make the Service security group: %s; retrying in %.0f s",
                        e, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, 30.0)
    return False


def _route(ctx: context.Context, plural: str, namespace: str, name: str) -> None:
    """Which handlers a change of one object concerns."""
    trigger = ctx.reactor.trigger
    if plural == "nodes":
        trigger(_POOLS)
        trigger(("nodepool", "", name))
    elif plural == "kuryrnodepools":
        trigger(("nodepool", "", name))
    elif plural == "pods":
        trigger(("pod", namespace, name))
    elif plural == "kuryrports":
        trigger(("kuryrport", namespace, name))
        trigger(("pod", namespace, name))
        network = ctx.cached("kuryrnetworks", namespace, namespace)
        if network is not None and network["metadata"].get("deletionTimestamp"):
            # A KuryrNetwork being deleted waits for the last KuryrPort of its namespace;
            # otherwise a port's change is no business of its network (with 50 pods
            # starting, it once cost a full reconcile of the network per status write).
            trigger(("kuryrnetwork", namespace, namespace))
    elif plural == "namespaces":
        trigger(("namespace", "", name))
        trigger(_POOLS)
    elif plural == "kuryrnetworks":
        trigger(("kuryrnetwork", namespace, name))
        trigger(("namespace", "", namespace))
        trigger(_POOLS)
        # The KuryrPorts waiting for their network's subnet (or for it to go).
        for port in ctx.informers["kuryrports"].in_namespace(namespace):
            trigger(("kuryrport", namespace, port["metadata"]["name"]))
    elif plural == "services":
        trigger(("service", namespace, name))
    elif plural == "endpointslices":
        piece = ctx.cached("endpointslices", namespace, name)
        service = ((piece or {}).get("metadata", {}).get("labels") or {}).get(
            resources.SERVICE_NAME_LABEL)
        if service:
            trigger(("service", namespace, service))
        else:  # gone: which Service it was of is not known any more; look at them all
            for obj in ctx.informers["services"].in_namespace(namespace):
                trigger(("service", namespace, obj["metadata"]["name"]))
    elif plural == "kuryrloadbalancers":
        trigger(("kuryrloadbalancer", namespace, name))
        trigger(("service", namespace, name))
        trigger(_SERVICE_RULES)
    if "networkpolicies" in ctx.informers:
        _route_policies(ctx, plural, namespace, name)


def _route_policies(ctx: context.Context, plural: str, namespace: str, name: str) -> None:
    """Which NetworkPolicy handlers a change concerns: a pod's groups (``podgroups``), the
    address groups (one key), a policy's variants, and the translations that depend on pods
    and Services (policies with egress rules: named ports, Service VIPs)."""
    trigger = ctx.reactor.trigger

    def pods_of(ns: str) -> None:
        for pod in ctx.informers["pods"].in_namespace(ns):
            trigger(("podgroups", ns, pod["metadata"]["name"]))

    def with_egress() -> None:
        for policy in ctx.informers["networkpolicies"].objects.values():
            if (policy.get("spec") or {}).get("egress"):
                meta = policy["metadata"]
                trigger(("networkpolicy", meta["namespace"], meta["name"]))

    if plural == "pods":
        trigger(("podgroups", namespace, name))
        trigger(_ADDRESS_GROUPS)
        for policy in ctx.informers["networkpolicies"].in_namespace(namespace):
            trigger(("kuryrnetworkpolicy", namespace, policy["metadata"]["name"]))
        with_egress()
    elif plural == "kuryrports":
        trigger(("podgroups", namespace, name))
        trigger(_ADDRESS_GROUPS)
        with_egress()
    elif plural == "namespaces":
        trigger(_ADDRESS_GROUPS)
        with_egress()
    elif plural == "nodes":
        trigger(_ADDRESS_GROUPS)
    elif plural == "networkpolicies":
        trigger(("networkpolicy", namespace, name))
        pods_of(namespace)
    elif plural == "kuryrnetworkpolicies":
        trigger(("kuryrnetworkpolicy", namespace, name))
        trigger(("networkpolicy", namespace, name))
        trigger(_ADDRESS_GROUPS)
        pods_of(namespace)
    elif plural in ("kuryrloadbalancers", "endpointslices"):
        with_egress()


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
    if kind == "pools":
        return await pooling.handle_pools(ctx)
    if kind == "nodepool":
        return await nodepools.handle_node_pool(ctx, name)
    if kind == "service":
        return await services.handle_service(ctx, namespace, name)
    if kind == "kuryrloadbalancer":
        return await loadbalancers.handle_loadbalancer(ctx, namespace, name)
    if kind == "servicerules":
        return await servicegroups.handle_rules(ctx)
    if kind == "networkpolicy":
        return await policies.handle_policy(ctx, namespace, name)
    if kind == "kuryrnetworkpolicy":
        return await policies.handle_kuryrpolicy(ctx, namespace, name)
    if kind == "addressgroups":
        return await addressgroups.handle(ctx)
    if kind == "podgroups":
        return await podgroups.handle_pod(ctx, namespace, name)
    raise errors.PermanentError(f"no handler for {kind}")


async def _report(ctx: context.Context, key: reacting.Key,
                  error: errors.PermanentError) -> None:
    """A PermanentError reported on the object the key names (``reporting``)."""
    kind, namespace, name = key
    resource = _KINDS.get(kind)
    if resource is not None:
        await reporting.report(ctx, resource, namespace, name, error)
