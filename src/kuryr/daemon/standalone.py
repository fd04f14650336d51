"""Standalone mode (podman, containerd; no Kubernetes): the daemon owns the Neutron port of
each container interface.

ADD creates (or takes from the warm pool) a port on the configuration's network, bound to this
host and tagged with the container ID, ifname and CNI network name, plugs it and waits for
ACTIVE (a request naming static addresses or a MAC, ``protocol.Request.ips`` and ``mac``,
gets a port made for it with exactly those, never a pooled one; such a port is deleted, not
recycled, at DEL); DEL unplugs it (OVS port and veth) and answers, then deletes (or recycles)
it in the background (``releasing``), idempotently and also without a netns; CHECK compares
``prevResult`` with the namespace and Neutron; GC removes this host's ports of a CNI network
whose attachment the runtime no longer knows; STATUS probes Neutron and OVS. A container port of
this host without an OVS interface is one whose release was under way: ``recover`` (at start-up
and in GC) releases it.

Owns the translation between CNI requests and ``kuryr.ports``; it does not parse requests
(``kuryr.cni``) nor serve HTTP (``server``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from kuryr import binding, errors, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.cni import codes, protocol, results
from kuryr.daemon import locking, releasing, sandboxes
from kuryr.linux import namespaces
from kuryr.neutron import client, failures, resources, tagging
from kuryr.pools import warm
from kuryr.ports import lifecycle

LOG = logging.getLogger(__name__)

TAG_CONTAINER = "cni-container"
TAG_IFNAME = "cni-ifname"
TAG_NETWORK = "cni-network"
TAG_STATIC = "cni-static"  # the port has the addresses or MAC the runtime asked for
_TARGET_TTL = 60.0
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a network configuration's ports go, with names resolved to IDs."""

    network: resources.Network
    subnet_id: str | None
    security_group_ids: tuple[str, ...] | None
    project_id: str | None

    @property
    def pool_key(self) -> warm.PoolKey:
        return warm.PoolKey(network_id=self.network.id,
                            security_group_ids=self.security_group_ids,
                            project_id=self.project_id)


def owner_tags(request: protocol.Request) -> list[str]:
    tags = [tagging.owner(TAG_CONTAINER, request.container_id),
            tagging.owner(TAG_IFNAME, request.ifname),
            tagging.owner(TAG_NETWORK, request.config.name)]
    if request.is_static:
        tags.append(tagging.owner(TAG_STATIC, "true"))
    return tags


class Standalone:
    """Serves CNI requests in standalone mode (``server.dispatch`` calls ``add``, ``delete``,
    ``check``, ``gc`` and ``status``)."""

    needs_network = True  # the CNI configuration names the Neutron network

    def __init__(self, neutron: client.Neutron, binders: Mapping[str, binding.Binder], *,
                 host: str, config: settings.CniDaemonSettings,
                 pool: warm.PortPool | None = None) -> None:
        self.neutron = neutron
        self.binders = binders
        self.host = host
        self.config = config
        self.pool = pool
        self.locks = locking.KeyedLocks()
        self._targets: dict[tuple[object, ...], tuple[float, Target]] = {}
        # Attachments this daemon made, with their port: a pooled ADD skips the Neutron lookup
        # of an existing port unless the runtime repeats an ADD this daemon already served, and
        # DEL of one skips the lookup by tags.
        self._attached: dict[protocol.AttachmentKey, str] = {}
        self._static_port_ids: set[str] = set()  # ports with addresses the runtime asked for
        self.releases = releasing.Releases()

    async def close(self, *, timeout: float = 10.0) -> None:
        """Let background releases finish (at most ``timeout`` seconds)."""
        await self.releases.drain(timeout)

    # -- ADD ------------------------------------------------------------------------------------
    async def add(self, request: protocol.Request) -> results.Result:
        conf = request.config
        namespaces.resolve(request.netns)  # fail before creating anything in Neutron
        target = await self.target(conf)
        tags = owner_tags(request)
        poolable = (self.pool is not None and conf.subnet is None and conf.mtu is None
                    and not request.is_static)
        if poolable and self.pool is not None:
            self.pool.wake(target.pool_key)  # fill (or refill) this network's pool
        pooled = (poolable and self.pool is not None and request.key not in self._attached
                  and self.pool.count(target.pool_key) > 0)
        existing = [] if pooled else await self._ports_of(request)
        if existing:
            # A repeated ADD, or one after a daemon restart: finish plugging what exists.
            attachment = await self._plug_or_release(existing[0], request)
            for extra in existing[1:]:
                await self._release(extra.id)
        elif pooled and self.pool is not None and (
                ready := self.pool.take(target.pool_key)) is not None:
            attachment = await self._hand_over(ready, request, tags)
        else:
            attachment = await self._attach_new(request, target, tags)
        self._attached[request.key] = attachment.port.id
        if request.is_static:
            self._static_port_ids.add(attachment.port.id)
        ours = sandboxes.result_for(attachment.vif, ifname=attachment.ifname,
                                    sandbox=request.netns)
        previous = results.from_wire(conf.prev_result) if conf.prev_result else None
        return results.merge(previous, ours)

    async def _attach_new(self, request: protocol.Request, target: Target,
                          tags: list[str]) -> lifecycle.Attachment:
        """A new port for ``request``, with the static addresses and MAC it names. Raises
        CniError 4 or 7 (an address not on the network), 107 (an address or MAC in use), and
        what ``lifecycle.attach`` raises; nothing is left in Neutron on failure."""
        conf = request.config
        fixed_ips = await self._fixed_ips(request, target)
        try:
            return await lifecycle.attach(
                self.neutron, self.binders, network_id=target.network.id, netns=request.netns,
                ifname=request.ifname, host=self.host, tags=tags,
                security_group_ids=target.security_group_ids, fixed_ips=fixed_ips,
                mac=request.mac, project_id=target.project_id, name=_port_name(request),
                active_timeout=self.config.port_active_timeout, mtu=conf.mtu)
        except failures.AddressInUseError as e:
            asked = ", ".join(str(ip) for ip in request.ips)
            raise codes.CniError(
                codes.ADDRESS_IN_USE,
                f"address {asked} asked for is in use on network {conf.network}",
                f"{e}; ask for a free address, or release the port holding it "
                "(openstack port list --fixed-ip ip-address=ADDRESS)") from e
        except failures.MacAddressInUseError as e:
            raise codes.CniError(
                codes.ADDRESS_IN_USE,
                f"MAC address {request.mac} asked for is in use on network {conf.network}",
                f"{e}; ask for another MAC, or release the port holding it "
                "(openstack port list --mac-address MAC)") from e
        except failures.InvalidAddressError as e:
            raise codes.CniError(self._address_code(request),
                                 f"Neutron refused the address or MAC asked for: {e}") from e

    async def _fixed_ips(self, request: protocol.Request,
                         target: Target) -> list[dict[str, str]] | None:
        """The port's ``fixed_ips``: each static address on the subnet that holds it, and for
        each IP family of the network's subnets that no static address names, one address
        chosen by Neutron (as Docker's ``--ip`` leaves IPv6 to IPAM). Raises CniError 4 or 7
        (an address on no subnet of the network, or of the configuration's ``subnet``)."""
        if not request.ips:
            return [{"subnet_id": target.subnet_id}] if target.subnet_id else None
        subnets = await self.neutron.list_subnets(network_id=target.network.id)
        if target.subnet_id is not None:
            subnets = [s for s in subnets if s.id == target.subnet_id]
        fixed: list[dict[str, str]] = []
        for ip in request.ips:
            holder = next((s for s in subnets
                           if ip in ipaddress.ip_network(s.cidr, strict=False)), None)
            if holder is None:
                where = f"subnet {request.config.subnet}" if target.subnet_id \
                    else f"network {request.config.network}"
                raise codes.CniError(
                    self._address_code(request), f"address {ip} is not on {where}",
                    "its subnets: " + (", ".join(s.cidr for s in subnets) or "none"))
            fixed.append({"subnet_id": holder.id, "ip_address": str(ip)})
        named = {ip.version for ip in request.ips}
        for version in sorted({s.ip_version for s in subnets} - named):
            first = next(s for s in subnets if s.ip_version == version)
            fixed.append({"subnet_id": first.id})
        return fixed

    @staticmethod
    def _address_code(request: protocol.Request) -> int:
        # runtimeConfig is part of the configuration (7); CNI_ARGS of the environment (4).
        return codes.INVALID_CONFIG if request.config.runtime_ips else \
            codes.INVALID_ENVIRONMENT

    async def _hand_over(self, ready: warm.ReadyPort, request: protocol.Request,
                         tags: list[str]) -> lifecycle.Attachment:
        """The container's record on the port's OVS Interface, then the move, in one thread
        (off the event loop); the Neutron retag in the background."""
        assert self.pool is not None
        try:
            await asyncio.to_thread(self.pool.hand_over, ready, netns=request.netns,
                                    ifname=request.ifname, owner_tags=tags)
        except BaseException:
            await asyncio.shield(self._release(ready.port.id))
            raise
        self.pool.handed_over(ready, tags)
        return lifecycle.Attachment(port=ready.port, vif=ready.vif, netns=request.netns,
                                    ifname=request.ifname)

    async def _plug_or_release(self, port: resources.Port,
                               request: protocol.Request) -> lifecycle.Attachment:
        try:
            return await lifecycle.plug_existing(
                self.neutron, self.binders, port_id=port.id, netns=request.netns,
                ifname=request.ifname, host=self.host,
                active_timeout=self.config.port_active_timeout, mtu=request.config.mtu)
        except BaseException:
            await asyncio.shield(self._release(port.id))
            raise

    async def target(self, conf: protocol.NetConf) -> Target:
        """The configuration's network, subnet and security groups as IDs (cached a minute).
        Raises CniError 7 for names Neutron does not know, TemporaryError."""
        names = (conf.network, conf.subnet, conf.security_groups, conf.project)
        cached = self._targets.get(names)
        if cached and time.monotonic() - cached[0] < _TARGET_TTL:
            return cached[1]
        network = await _named(self.neutron.get_network(conf.network), "network", conf.network)
        subnet_id = None
        if conf.subnet:
            subnet = await _named(self.neutron.get_subnet(conf.subnet), "subnet", conf.subnet)
            if subnet.network_id != network.id:
                raise codes.CniError(codes.INVALID_CONFIG,
                                     f"subnet {conf.subnet} is not on network {conf.network}")
            subnet_id = subnet.id
        groups = None
        if conf.security_groups is not None:
            found = await asyncio.gather(*(
                _named(self.neutron.get_security_group(g), "security group", g)
                for g in conf.security_groups))
            groups = tuple(sorted(g.id for g in found))
        target = Target(network=network, subnet_id=subnet_id, security_group_ids=groups,
                        project_id=conf.project)
        self._targets[names] = (time.monotonic(), target)
        return target

    # -- DEL ------------------------------------------------------------------------------------
    async def delete(self, request: protocol.Request) -> None:
        """Unplug the host side (OVS port, veth) and return; the port is deleted or recycled
        in the background. Idempotent: no port, link or namespace is success.
        Raises BindingError, TemporaryError (listing ports)."""
        port_id = self._attached.pop(request.key, None)
        if port_id is not None:
            port_ids = [port_id]
        else:
            if self.pool is not None:
                await self.pool.settle()  # owner tags of ports just taken from the pool
            ports = await self._ports_of(request)
            port_ids = [p.id for p in ports]
            self._static_port_ids.update(
                p.id for p in ports if tagging.value_of(p.tags, TAG_STATIC) is not None)
        for port_id in port_ids:
            # A port with the runtime's addresses is deleted: recycled, it would keep them.
            is_static = request.is_static or port_id in self._static_port_ids
            self._static_port_ids.discard(port_id)
            # Unplugged = being released: from here on a crash is recovered at start-up.
            await lifecycle.detach(self.neutron, self.binders, port_id=port_id,
                                   netns=request.netns or None, ifname=request.ifname,
                                   delete_port=False)
            self.releases.start(port_id, functools.partial(
                self._release_in_background, port_id, request.config, is_static=is_static))

    async def _release_in_background(self, port_id: str, conf: protocol.NetConf, *,
                                     is_static: bool = False) -> None:
        if self.pool is not None:
            await self.pool.settle()  # a pending retag must not land after the recycle's
        recycle_into = None if is_static else await self._recycle_key(conf)
        await self._release(port_id, recycle_into=recycle_into)

    async def _recycle_key(self, conf: protocol.NetConf) -> warm.PoolKey | None:
        """The pool a released port of ``conf`` may go back to (None: delete it)."""
        if self.pool is None or conf.subnet is not None or conf.mtu is not None:
            return None
        try:
            return (await self.target(conf)).pool_key
        except errors.KuryrError:
            return None

    async def _release(self, port_id: str, *, netns: str | None = None,
                       ifname: str | None = None,
                       recycle_into: warm.PoolKey | None = None) -> None:
        if recycle_into is not None and self.pool is not None and \
                await self.pool.recycle(port_id, recycle_into):
            return
        await lifecycle.detach(self.neutron, self.binders, port_id=port_id, netns=netns,
                               ifname=ifname)

    async def _ports_of(self, request: protocol.Request) -> list[resources.Port]:
        """The ports of the request's attachment, except those being released."""
        ports = await self.neutron.list_ports(
            tags=[tagging.owner(TAG_CONTAINER, request.container_id),
                  tagging.owner(TAG_IFNAME, request.ifname)],
            device_owner=lifecycle.DEVICE_OWNER)
        return [p for p in ports if p.id not in self.releases]

    # -- CHECK ----------------------------------------------------------------------------------
    async def check(self, request: protocol.Request) -> None:
        """Raises CniError 106 listing every difference between ``prevResult`` and reality."""
        previous, index, expected = sandboxes.previous_result(request)
        diffs = await sandboxes.namespace_differences(request, previous, index, expected)
        if self.pool is not None:
            await self.pool.settle()  # owner tags of a port just taken from the pool
        ports = await self._ports_of(request)
        if not ports:
            diffs.append(f"Neutron has no port for container {request.container_id} "
                         f"interface {request.ifname}")
        else:
            port = ports[0]
            if port.status != "ACTIVE":
                diffs.append(f"Neutron port {port.id} is {port.status}, not ACTIVE")
            if expected.mac and port.mac.lower() != expected.mac.lower():
                diffs.append(f"Neutron port {port.id} has MAC {port.mac}, not {expected.mac}")
            addresses = {f.ip_address for f in port.fixed_ips}
            for ip in previous.ips:
                if ip.interface in (None, index) and str(ip.address.ip) not in addresses:
                    diffs.append(f"Neutron port {port.id} no longer has {ip.address.ip}")
        if diffs:
            raise sandboxes.mismatch(request, diffs)

    # -- GC -------------------------------------------------------------------------------------
    async def gc(self, conf: protocol.NetConf) -> list[str]:
        """Release this host's ports of network configuration ``conf.name`` whose (container,
        ifname) is not among ``cni.dev/valid-attachments``. Returns the port IDs released."""
        valid = set(conf.valid_attachments or ())
        ports = await self.neutron.list_ports(
            tags=[tagging.owner(TAG_NETWORK, conf.name)], device_owner=lifecycle.DEVICE_OWNER,
            **{"binding:host_id": self.host})
        released = []
        for port in ports:
            container_id = tagging.value_of(port.tags, TAG_CONTAINER)
            ifname = tagging.value_of(port.tags, TAG_IFNAME)
            if container_id is None or ifname is None:
                continue
            if protocol.AttachmentKey(container_id, ifname) in valid or port.id in self.releases:
                continue
            if self.locks.is_held(container_id):
                continue  # an ADD or DEL of it is running right now
            async with self.locks.hold(container_id, timeout=self.config.lock_timeout):
                LOG.info("GC: releasing port %s of container %s (%s)", port.id, container_id,
                         ifname)
                await self._release(port.id)
                released.append(port.id)
        released += await self.recover()
        return released

    async def recover(self) -> list[str]:
        """Release (delete) this host's CNI container ports that have no OVS interface: ports
        whose release was cut short (a daemon killed after a DEL answered), or whose ADD died
        before plugging. Ports of a container with a request running are left alone, and each
        is checked again under the container's lock. Returns the port IDs released.
        Raises TemporaryError, BindingError."""
        plugged = await self._plugged_port_ids()
        if plugged is None:
            return []  # no way to tell unplugged from plugged: release nothing
        ports = await self.neutron.list_ports(device_owner=lifecycle.DEVICE_OWNER,
                                              **{"binding:host_id": self.host})
        released = []
        for port in ports:
            container_id = tagging.value_of(port.tags, TAG_CONTAINER)
            if container_id is None or port.id in plugged or port.id in self.releases:
                continue
            if self.locks.is_held(container_id):
                continue
            async with self.locks.hold(container_id, timeout=self.config.lock_timeout):
                again = await self._plugged_port_ids()
                if port.id in self.releases or again is None or port.id in again:
                    continue  # plugged, or being released, meanwhile
                LOG.info("releasing port %s of container %s: it has no OVS interface",
                         port.id, container_id)
                await self._release(port.id)
                released.append(port.id)
        return released

    async def _plugged_port_ids(self) -> set[str] | None:
        binder = self.binders.get("ovs")
        if not isinstance(binder, ovs_binding.OvsBinder):
            return None
        return await asyncio.to_thread(binder.plugged_port_ids)

    # -- STATUS ---------------------------------------------------------------------------------
    async def status(self, conf: protocol.NetConf | None = None) -> None:
        """Raises CniError 50 (cannot serve ADD: Neutron, the network or the OVS bridge
        missing) or 51 (OVS unreachable: running containers may lose connectivity)."""
        try:
            if conf is not None:
                await self.target(conf)
            else:
                await self.neutron.list_networks(tags=[tagging.KURYR, "kuryr-status-probe"])
        except codes.CniError as e:
            raise codes.CniError(codes.NOT_AVAILABLE, e.msg, e.details) from e
        except errors.KuryrError as e:
            raise codes.CniError(codes.NOT_AVAILABLE, f"cannot reach Neutron: {e}",
                                 "check Neutron (kuryr cloud status)") from e
        await sandboxes.check_ovs(self.binders)


def _port_name(request: protocol.Request) -> str:
    return f"cni-{request.config.name}-{request.container_id[:12]}-{request.ifname}"


async def _named(lookup: Awaitable[_T], kind: str, name: str) -> _T:
    try:
        return await lookup
    except errors.NotFoundError as e:
        raise codes.CniError(
            codes.INVALID_CONFIG, f"Neutron has no {kind} named {name!r}",
            f"fix the {kind} in the CNI network configuration, or create it in Neutron "
            f"(openstack {kind} list)") from e
