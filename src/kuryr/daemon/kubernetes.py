"""Kubernetes mode: the daemon plugs the VIF the controller wrote into each pod's KuryrPort,
and never calls Neutron.

An informer lists and watches the KuryrPorts of this node only (label
``kuryr.openstack.org/nodeName=<[binding] host>``). ADD takes the pod from ``CNI_ARGS``
(``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``, ``K8S_POD_UID``), waits, woken by the informer and
bounded by ``[cni_daemon] vif_timeout``, for that pod's KuryrPort to carry a VIF, plugs it
with the container recorded on the OVS Interface (``external_ids``), waits as long again for
the port to be ready (this node's ovn-controller setting ``ovn-installed`` on it, learnt from
OVSDB; where readiness is Neutron's, ``[binding] readiness``, the controller marking the VIF
active), and answers with the CNI result. A failure unplugs what
was plugged and posts a Warning Event on the pod. DEL finds the container's port in OVS alone,
so it works after a daemon restart, without the KuryrPort and without a netns. CHECK compares
``prevResult`` with the namespace, OVS and the VIF; GC unplugs this mode's ports whose
container the runtime no longer knows; STATUS is ready once the informer has listed and OVS
answers, and not while the watch has kept failing for more than ``[cni_daemon]
watch_stale_after`` seconds.

Owns the translation between CNI requests and KuryrPorts; not the VIF (the controller's),
the plugging (``kuryr.binding``) nor the wire (``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kuryr import binding, errors, model, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.cni import codes, protocol, results
from kuryr.daemon import locking, preplugging, sandboxes
from kuryr.k8s import api, resources, watching
from kuryr.linux import namespaces, ovs
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

MODE = "kubernetes"
COMPONENT = "kuryr-daemon"
FAILED_REASON = "KuryrCNIFailed"
# What ADD records on the OVS Interface (external_ids), and DEL, CHECK and GC look for.
ID_MODE = "kuryr-cni-mode"
ID_CLUSTER = "kuryr-cluster"
ID_NETWORK = "kuryr-cni-network"
ID_CONTAINER = "kuryr-container-id"
ID_IFNAME = "kuryr-ifname"
ID_POD = "kuryr-pod"
ID_POD_UID = "kuryr-pod-uid"
ARG_NAMESPACE, ARG_NAME, ARG_UID = "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Pod:
    """The pod a request is for, as the runtime names it in ``CNI_ARGS``."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def reference(self) -> api.Object:
        """The pod as an Event's ``involvedObject`` sees it."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid}}


def pod_of(request: protocol.Request) -> Pod:
    """The pod in the request's ``CNI_ARGS``. Raises CniError 4 when one is missing."""
    args = request.cni_args
    missing = [k for k in (ARG_NAMESPACE, ARG_NAME, ARG_UID) if not args.get(k)]
    if missing:
        raise codes.CniError(
            codes.INVALID_ENVIRONMENT,
            f"CNI_ARGS lacks {', '.join(missing)}: the kuryr daemon's Kubernetes mode plugs the "
            "VIF of the pod these name",
            "the kubelet's runtime (containerd, CRI-O) passes K8S_POD_NAMESPACE, K8S_POD_NAME "
            "and K8S_POD_UID; a runtime without Kubernetes needs [cni_daemon] mode = standalone")
    return Pod(args[ARG_NAMESPACE], args[ARG_NAME], args[ARG_UID])


def vif_of(kuryr_port: api.Object | None, pod: Pod, ifname: str) -> model.VIF | None:
    """The VIF for ``ifname`` in a KuryrPort of ``pod`` (that pod's UID, not being deleted),
    else None. Raises CniError 100 for a VIF this daemon cannot read."""
    if kuryr_port is None or (kuryr_port.get("metadata") or {}).get("deletionTimestamp"):
        return None
    if (kuryr_port.get("spec") or {}).get("podUid") != pod.uid:
        return None
    vifs = (kuryr_port.get("status") or {}).get("vifs") or {}
    entry = vifs.get(ifname) or next((v for v in vifs.values()
                                      if isinstance(v, dict) and v.get("default")), None)
    raw = entry.get("vif") if isinstance(entry, dict) else None
    if not isinstance(raw, dict):
        return None
    try:
        return model.VIF.from_dict(raw)
    except ValueError as e:
        raise codes.CniError(codes.INTERNAL, f"the KuryrPort of pod {pod} carries a VIF this "
                             f"daemon cannot read: {e}",
                             "the controller and the daemon may run different kuryr "
                             "versions") from e


def _diagnose(kuryr_port: api.Object | None, pod: Pod) -> str:
    """Why a pod's KuryrPort has no usable VIF, for the operator."""
    if kuryr_port is None:
        return "it has no KuryrPort on this node (is kuryr-controller running?)"
    if (kuryr_port.get("metadata") or {}).get("deletionTimestamp"):
        return "its KuryrPort is being deleted"
    if (kuryr_port.get("spec") or {}).get("podUid") != pod.uid:
        return "its KuryrPort belongs to an earlier pod of the same name"
    return "its KuryrPort has no VIF yet (kuryr-controller has not made its Neutron port)"


class KubernetesMode:
    """Serves CNI requests in Kubernetes mode (``server.dispatch`` calls ``add``, ``delete``,
    ``check``, ``gc`` and ``status``). ``start`` begins watching."""

    needs_network = False  # the pod's KuryrPort names its network, not the CNI config

    def __init__(self, kube: api.Kube, binders: Mapping[str, binding.Binder], *,
                 config: settings.KuryrSettings) -> None:
        self.kube = kube
        self.binders = binders
        self.node = config.binding.host
        self.cluster_id = config.cluster_id
        self.config = config.cni_daemon
        self.locks = locking.KeyedLocks()  # per container
        # Per Neutron port: a pod's new sandbox may be plugged while its old one is deleted.
        self.port_locks = locking.KeyedLocks()
        self.informer = watching.Informer(
            kube, resources.KURYR_PORTS, on_change=self._changed,
            label_selector=f"{resources.NODE_LABEL}={self.node}")
        self._waiters: dict[watching.Key, set[asyncio.Event]] = {}
        self._watching: asyncio.Task[None] | None = None
        self.prepared: preplugging.PrePlugged | None = None
        self._preplugging: asyncio.Task[None] | None = None
        binder = binders.get("ovs")
        if self.config.preplug and isinstance(binder, ovs_binding.OvsBinder):
            self.prepared = preplugging.PrePlugged(
                kube, binder, node=self.node, cluster_id=self.cluster_id, mode_key=ID_MODE,
                cluster_key=ID_CLUSTER, port_locks=self.port_locks, in_use=self._named_ports,
                ready_timeout=self.config.vif_timeout)
        self._tasks: set[asyncio.Task[Any]] = set()  # Events being posted

    def start(self) -> None:
        """List and watch this node's KuryrPorts in the background."""
        loop = asyncio.get_running_loop()
        self._watching = loop.create_task(self.informer.run(),
                                          name=f"watch kuryrports of {self.node}")
        if self.prepared is not None:
            self._preplugging = loop.create_task(self.prepared.run(),
                                                 name=f"pre-plug pool ports of {self.node}")

    async def close(self) -> None:
        """Stop watching; let pending Events go out (briefly)."""
        for task in (self._watching, self._preplugging):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, work: Any, *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- waiting on the informer ------------------------------------------------------------
    def _changed(self, namespace: str, name: str) -> None:
        for event in self._waiters.get((namespace, name), ()):
            event.set()
        if self.prepared is not None:
            self.prepared.wake()

    def _named_ports(self) -> set[str]:
        """Every port a KuryrPort of this node names."""
        named = set()
        for kuryr_port in self.informer.objects.values():
            for entry in ((kuryr_port.get("status") or {}).get("vifs") or {}).values():
                port_id = ((entry or {}).get("vif") or {}).get("port_id")
                if port_id:
                    named.add(port_id)
        return named

    async def _wait(self, key: watching.Key, look: Callable[[api.Object | None], _T | None],
                    *, timeout: float) -> _T:
        """What ``look`` finds in the cached KuryrPort ``key``, looking again on each change.
        Raises TimeoutError after ``timeout`` seconds, and whatever ``look`` raises."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(event)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event.clear()
                    found = look(self.informer.get(*key))
                    if found is not None:
                        return found
                    await event.wait()
        finally:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(key, None)

    # -- ADD ----------------------------------------------------------------------------------
    async def add(self, request: protocol.Request) -> results.Result:
        """Wait for the pod's VIF, plug it, wait for it to be active. On failure nothing stays
        plugged and the pod gets a Warning Event. Raises CniError 4 (CNI_ARGS), 11 (a wait
        ran out), 104 (no netns), BindingError."""
        pod = pod_of(request)
        try:
            return await self._add(request, pod)
        except Exception as e:
            self._report(pod, e)
            raise

    async def _add(self, request: protocol.Request, pod: Pod) -> results.Result:
        namespaces.resolve(request.netns)  # no wait for a sandbox that is not there
        key = (pod.namespace, pod.name)
        bound = self.config.vif_timeout
        try:
            vif = await self._wait(key, functools.partial(vif_of, pod=pod,
                                                          ifname=request.ifname), timeout=bound)
        except TimeoutError:
            raise codes.CniError(
                codes.TRY_AGAIN_LATER,
                f"timed out after {bound:g} s waiting for the VIF of pod {pod}: "
                f"{_diagnose(self.informer.get(*key), pod)}",
                "[cni_daemon] vif_timeout bounds the wait; the runtime retries") from None
        if request.config.mtu and request.config.mtu < vif.mtu:
            vif = dataclasses.replace(vif, mtu=request.config.mtu)
        binder = binding.binder_for(dict(self.binders), vif)
        owner_ids = {ID_MODE: MODE, ID_CLUSTER: self.cluster_id,
                     ID_NETWORK: request.config.name, ID_CONTAINER: request.container_id,
                     ID_IFNAME: request.ifname, ID_POD: str(pod), ID_POD_UID: pod.uid}
        held = self.prepared is not None and await self.prepared.take(vif.port_id)
        async with self.port_locks.hold(vif.port_id, timeout=self.config.lock_timeout), \
                contextlib.AsyncExitStack() as undo:
            if held:
                assert self.prepared is not None
                undo.push_async_callback(lifecycle.unplug_quietly, binder, vif)
                await asyncio.to_thread(self.prepared.hand_over, vif, netns=request.netns,
                                        ifname=request.ifname, owner_ids=owner_ids)
            else:
                await lifecycle.plug(binder, vif, netns=request.netns, ifname=request.ifname,
                                     undo=undo, owner_ids=owner_ids)
            try:
                if held and isinstance(binder, ovs_binding.OvsBinder) and \
                        await binder.uses_ovn():
                    # Installed when it was plugged ahead, on this same OVS row: no OVSDB
                    # round trip (50 pods at once queue on the one OVSDB connection).
                    self._is_active(self.informer.get(*key), pod=pod, vif=vif,
                                    ifname=request.ifname, active=False)
                elif await binder.wait_ready(vif, timeout=bound):
                    # This node's ovn-controller has installed the port: the data path is
                    # ready. The controller records Neutron's ACTIVE later, off this path.
                    self._is_active(self.informer.get(*key), pod=pod, vif=vif,
                                    ifname=request.ifname, active=False)
                else:
                    await self._wait(key, functools.partial(
                        self._is_active, pod=pod, vif=vif, ifname=request.ifname),
                        timeout=bound)
            except TimeoutError:
                raise codes.CniError(
                    codes.TRY_AGAIN_LATER,
                    f"timed out after {bound:g} s waiting for the VIF of pod {pod} (port "
                    f"{vif.port_id}) to become active once plugged; unplugged it again",
                    "kuryr-controller marks the VIF active once Neutron reports the port "
                    "ACTIVE; check the controller, Neutron and ovn-controller on this "
                    "node") from None
            except errors.TemporaryError as e:  # ovn-controller did not install it in time
                raise codes.CniError(
                    codes.TRY_AGAIN_LATER, f"pod {pod}: {e}; unplugged it again",
                    "[binding] readiness says whose word a plugged port waits for; "
                    "[cni_daemon] vif_timeout bounds the wait") from None
            undo.pop_all()
        if not held:  # a hand-over announced already (the port was installed)
            await lifecycle.announce(vif, netns=request.netns, ifname=request.ifname)
        LOG.info("ADD %s: pod %s on port %s in %s as %s%s", request.container_id[:12], pod,
                 vif.port_id, request.netns, request.ifname,
                 " (pre-plugged)" if held else "")
        ours = sandboxes.result_for(vif, ifname=request.ifname, sandbox=request.netns)
        prev = request.config.prev_result
        return results.merge(results.from_wire(prev) if prev else None, ours)

    @staticmethod
    def _is_active(kuryr_port: api.Object | None, *, pod: Pod, vif: model.VIF,
                   ifname: str, active: bool = True) -> bool | None:
        """True once the plugged VIF is active (or at once, unless ``active``); CniError 11
        if the pod's KuryrPort went away or now names another port."""
        current = vif_of(kuryr_port, pod, ifname)
        if current is None:
            raise codes.CniError(codes.TRY_AGAIN_LATER,
                                 f"the VIF of pod {pod} went away while it was being plugged: "
                                 f"{_diagnose(kuryr_port, pod)}; unplugged it again")
        if current.port_id != vif.port_id:
            raise codes.CniError(codes.TRY_AGAIN_LATER,
                                 f"the VIF of pod {pod} changed from port {vif.port_id} to "
                                 f"{current.port_id} while it was being plugged; unplugged it")
        return True if current.is_active or not active else None

    def _report(self, pod: Pod, error: BaseException) -> None:
        """A Warning Event on the pod, sent in the background (the runtime is not kept
        waiting for it)."""
        failure = codes.from_exception(error)
        message = f"CNI ADD failed on node {self.node} (code {failure.code}): {failure.msg}"
        self._spawn(self.kube.post_event(pod.reference, reason=FAILED_REASON, message=message,
                                         component=COMPONENT), name=f"event on {pod}")

    # -- DEL ----------------------------------------------------------------------------------
    async def delete(self, request: protocol.Request) -> None:
        """Unplug the container's port(s), found in OVS by the container ID and ifname ADD
        recorded there. Idempotent: nothing plugged is success. Raises BindingError."""
        binder = self._ovs()
        owned = await asyncio.to_thread(binder.owned_ports)
        for port_id, ids in owned.items():
            if self._is_ours(ids, cluster=False) and ids.get(ID_CONTAINER) == \
                    request.container_id and ids.get(ID_IFNAME) == request.ifname:
                await self._unplug(binder, port_id, container_id=request.container_id)

    async def _unplug(self, binder: ovs_binding.OvsBinder, port_id: str, *,
                      container_id: str) -> bool:
        """Unplug ``port_id`` unless, looked at again under its lock, it now serves another
        container (the pod's next sandbox). Returns whether it was unplugged."""
        async with self.port_locks.hold(port_id, timeout=self.config.lock_timeout):
            ids = (await asyncio.to_thread(binder.owned_ports)).get(port_id)
            if ids is None or ids.get(ID_CONTAINER) != container_id:
                return False
            await asyncio.to_thread(binder.unplug_sync, port_id)
        LOG.info("unplugged port %s of container %s (pod %s)", port_id, container_id[:12],
                 ids.get(ID_POD, "?"))
        if self.prepared is not None:
            self.prepared.wake()  # a recycled port it held may be plugged ahead now
        return True

    def _is_ours(self, ids: Mapping[str, str], *, cluster: bool = True) -> bool:
        return ids.get(ID_MODE) == MODE and (not cluster or
                                             ids.get(ID_CLUSTER) == self.cluster_id)

    def _ovs(self) -> ovs_binding.OvsBinder:
        binder = self.binders.get("ovs")
        if not isinstance(binder, ovs_binding.OvsBinder):
            raise errors.PermanentError("Kubernetes mode needs the OVS binder")
        return binder

    # -- CHECK --------------------------------------------------------------------------------
    async def check(self, request: protocol.Request) -> None:
        """Raises CniError 106 listing every difference between ``prevResult`` and the
        namespace, OVS and the pod's VIF; 4 (CNI_ARGS), 7 (no prevResult)."""
        pod = pod_of(request)
        previous, index, expected = sandboxes.previous_result(request)
        diffs = await sandboxes.namespace_differences(request, previous, index, expected)
        vif = vif_of(self.informer.get(pod.namespace, pod.name), pod, request.ifname)
        if vif is None:
            diffs.append(f"pod {pod} has no VIF: "
                         f"{_diagnose(self.informer.get(pod.namespace, pod.name), pod)}")
        else:
            if expected.mac and vif.mac.lower() != expected.mac.lower():
                diffs.append(f"the VIF of pod {pod} has MAC {vif.mac}, not {expected.mac}")
            addresses = {str(f.address) for f in vif.fixed_ips}
            for ip in previous.ips:
                if ip.interface in (None, index) and str(ip.address) not in addresses:
                    diffs.append(f"the VIF of pod {pod} no longer has {ip.address}")
            binder = self._ovs()
            ids = (await asyncio.to_thread(binder.owned_ports)).get(vif.port_id)
            if await binder.uses_ovn():
                if ids is not None and ids.get(ovs.INSTALLED_KEY) != "true":
                    diffs.append(f"port {vif.port_id} of pod {pod} is not installed by this "
                                 "node's ovn-controller")
            elif not vif.is_active:
                diffs.append(f"the VIF of pod {pod} (port {vif.port_id}) is not active")
            if ids is None or ids.get(ID_CONTAINER) != request.container_id:
                diffs.append(f"port {vif.port_id} is not plugged into OVS for container "
                             f"{request.container_id}")
        if diffs:
            raise sandboxes.mismatch(request, diffs)

    # -- GC -----------------------------------------------------------------------------------
    async def gc(self, conf: protocol.NetConf) -> list[str]:
        """Unplug this mode's ports of network configuration ``conf.name`` (and this cluster)
        whose (container, ifname) is not among ``cni.dev/valid-attachments``. Returns the
        port IDs unplugged. Raises BindingError."""
        valid = set(conf.valid_attachments or ())
        binder = self._ovs()
        unplugged = []
        for port_id, ids in (await asyncio.to_thread(binder.owned_ports)).items():
            container_id, ifname = ids.get(ID_CONTAINER), ids.get(ID_IFNAME)
            if not self._is_ours(ids) or ids.get(ID_NETWORK) != conf.name or \
                    not container_id or not ifname:
                continue
            if protocol.AttachmentKey(container_id, ifname) in valid or \
                    self.locks.is_held(container_id):
                continue  # valid, or an ADD or DEL of it is running right now
            async with self.locks.hold(container_id, timeout=self.config.lock_timeout):
                if await self._unplug(binder, port_id, container_id=container_id):
                    LOG.info("GC: unplugged port %s of container %s: not a valid attachment",
                             port_id, container_id[:12])
                    unplugged.append(port_id)
        return unplugged

    # -- STATUS -------------------------------------------------------------------------------
    async def status(self, conf: protocol.NetConf | None = None) -> None:
        """Raises CniError 50 (the KuryrPorts of this node not listed yet, or their watch
        failing for more than ``watch_stale_after`` s; the OVS bridge missing) or 51 (OVS
        unreachable)."""
        del conf  # the network comes from each pod's KuryrPort
        if not self.informer.synced.is_set():
            raise codes.CniError(
                codes.NOT_AVAILABLE,
                f"not synced with Kubernetes yet: the KuryrPorts of node {self.node} are not "
                "listed", "check the API server and the daemon's access to list and watch "
                "kuryrports ([kubernetes] in kuryr.conf, the kuryr-daemon ClusterRole)")
        # A short API outage is ridden out on the cache; a long one makes the node not ready.
        stale = self.informer.failing_for()
        if stale > self.config.watch_stale_after:
            raise codes.CniError(
                codes.NOT_AVAILABLE,
                f"lost the watch of the KuryrPorts of node {self.node} {stale:.0f} s ago: "
                f"{self.informer.error}", "check the API server and the daemon's access to it; "
                "the daemon keeps trying")
        await sandboxes.check_ovs(self.binders)
