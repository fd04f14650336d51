"""What ``kuryr doctor`` looks for: faults that leave containers without a network, each
found in Neutron, OVS or a CNI conf dir and given with a suggested fix.

Owns the checks and their findings; does not fix anything (the fixes are suggestions) and does
not own how findings are printed (``kuryr.cli.doctor``). The checks:
- ``port-down``: a kuryr port DOWN for longer than ``down_after``, with the reason where it
  can be told: its ``binding:host_id`` is no OVN chassis, ``binding:vif_type`` is
  ``binding_failed``, it has no host, or it is bound here with no OVS interface here;
- ``quota``: ports, security groups and rules of the projects kuryr's ports are in, with less
  than ``headroom`` (a fraction of the limit) left;
- ``subnet-exhaustion``: subnets of the networks kuryr's ports are on with less than
  ``headroom`` of their allocation pools free;
- ``untagged-port``: a ``compute:kuryr`` port older than ``down_after`` without kuryr's tag
  or any owner tag, and not named as a pool's batch (nothing of kuryr's will ever find or
  release it);
- ``stale-ovs-interface``: an OVS interface kuryr made (``external_ids:owner=kuryr``) on
  ``[binding] ovs_bridge`` whose Neutron port is gone, or whose veth is gone (its
  container's netns was removed without a CNI DEL);
- ``cni-network-missing``: a conflist naming kuryr whose ``network`` Neutron does not have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from typing import Any

from kuryr import errors, settings
from kuryr.linux import interfaces, ovs
from kuryr.neutron import client, connecting, resources, tagging
from kuryr.operating import inventory, status
from kuryr.ports import lifecycle

WARN, FAIL = "warn", "fail"
QUOTA_KINDS = (("ports", "port"), ("security_groups", "security group"),
               ("security_group_rules", "security group rule"))


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str
    severity: str  # warn or fail
    subject: str  # the resource: a port, project, subnet, OVS interface or conflist
    finding: str
    fix: str

    def as_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    down_after: float = 300.0  # seconds a port may stay DOWN (a container starting: ~1 s)
    headroom: float = 0.1  # the fraction of a quota or subnet that must be left


async def examine(config: settings.KuryrSettings, *, thresholds: Thresholds = Thresholds(),
                  cni_conf_dirs: tuple[str, ...] = status.CNI_CONF_DIRS
                  ) -> tuple[list[Finding], list[str]]:
    """Findings, and notes on what could not be examined. Raises TemporaryError,
    PermanentError, ConfigError when Neutron cannot be read at all."""
    notes: list[str] = []
    neutron = client.Neutron.from_settings(config)
    conn = connecting.connect(config.neutron)
    db = ovs.Ovsdb(config.binding.ovsdb_connection,
                   timeout=min(config.binding.ovsdb_timeout, 5.0))
    try:
        ports = await neutron.list_ports(device_owner=lifecycle.DEVICE_OWNER)
        all_port_ids = {p.id for p in await neutron.list_ports()}
        chassis = await asyncio.to_thread(_chassis_hosts, conn)
        iface_ids: set[str] | None = None
        owned: dict[str, dict[str, str]] | None = None
        try:
            iface_ids = await asyncio.to_thread(db.iface_ids)
            owned = await asyncio.to_thread(db.owned_ports, config.binding.ovs_bridge)
        except errors.KuryrError as e:
            notes.append(f"OVS not readable, OVS checks skipped: {e}")
        findings = [
            *_down_ports(ports, chassis=chassis, host=config.binding.host,
                         iface_ids=iface_ids, down_after=thresholds.down_after),
            *await asyncio.to_thread(_quotas, conn, ports, thresholds.headroom),
            *await asyncio.to_thread(_subnets, conn, ports, thresholds.headroom),
            *_untagged(ports, grace=thresholds.down_after),
            *(await _stale_interfaces(neutron, db, owned, all_port_ids,
                                      bridge=config.binding.ovs_bridge)
              if owned is not None else []),
            *await _cni_networks(neutron, cni_conf_dirs),
        ]
        return findings, notes
    finally:
        neutron.close()
        conn.close()
        await asyncio.to_thread(db.close)


def _chassis_hosts(conn: Any) -> set[str]:
    return {a.host for a in conn.network.agents() if a.binary == status.OVN_AGENT_BINARY}


def _down_ports(ports: list[resources.Port], *, chassis: set[str], host: str,
                iface_ids: set[str] | None, down_after: float) -> list[Finding]:
    now = datetime.datetime.now(datetime.UTC)
    found = []
    for p in ports:
        age = inventory.age_of(p.created_at, now=now)
        if p.status != "DOWN" or age is None or age < down_after:
            continue
        owner = inventory.owner_of(p)
        if not p.host_id:
            reason, fix = "it is bound to no host", (
                "set binding:host_id to the chassis hostname of the node that plugs it")
        elif p.host_id not in chassis:
            reason = f"its binding:host_id {p.host_id!r} is no OVN chassis (chassis: " \
                     + (", ".join(sorted(chassis)) or "none") + ")"
            fix = ("set [binding] host on that node to its OVN chassis hostname "
                   "(external_ids:hostname in Open_vSwitch), or start ovn-controller there")
        elif p.vif_type == "binding_failed":
            reason, fix = "Neutron could not bind it (binding:vif_type binding_failed)", (
                "check the mechanism driver's log in Neutron; then rebind: openstack port "
                f"set --host {p.host_id} {p.id}")
        elif p.host_id == host and iface_ids is not None and p.id not in iface_ids:
            reason, fix = "it is bound here but not plugged (no OVS interface here)", (
                f"if its owner ({owner.label}) is gone, delete it: openstack port delete {p.id}")
        else:
            reason, fix = "it is plugged but OVN has not claimed it", (
                f"check ovn-controller on {p.host_id} (kuryr status there)")
        whose = owner.label if owner.kind == inventory.KIND_POOL else \
            f"{owner.kind} {owner.label}"
        found.append(Finding("port-down", FAIL, p.id,
                             f"port of {whose} DOWN for "
                             f"{inventory.format_age(age)}: {reason}", fix))
    return found


def _quotas(conn: Any, ports: list[resources.Port], headroom: float) -> list[Finding]:
    projects = sorted({p.project_id for p in ports if p.project_id})
    found = []
    for project in projects:
        quota = conn.network.get_quota(project, details=True)
        for attribute, what in QUOTA_KINDS:
            detail = getattr(quota, attribute, None) or {}
            limit, used = detail.get("limit", -1), detail.get("used", 0) + detail.get(
                "reserved", 0)
            if limit is None or limit < 0:
                continue  # unlimited
            left = limit - used
            if left <= limit * headroom:
                found.append(Finding(
                    "quota", FAIL if left <= 0 else WARN, f"project {project}",
                    f"{what} quota: {used} of {limit} used, {max(left, 0)} left",
                    f"raise it (openstack quota set --{what.replace(' ', '-')}s "
                    f"{max(limit * 2, limit + 10)} {project}) or remove what leaked "
                    "(kuryr ports --orphans, kuryr gc)"))
    return found


def _subnets(conn: Any, ports: list[resources.Port], headroom: float) -> list[Finding]:
    network_ids = {p.network_id for p in ports}
    found = []
    for availability in conn.network.network_ip_availabilities():
        if availability.network_id not in network_ids:
            continue
        for s in availability.subnet_ip_availability or ():
            total, used = s.get("total_ips") or 0, s.get("used_ips") or 0
            if total and total - used <= total * headroom:
                found.append(Finding(
                    "subnet-exhaustion", FAIL if used >= total else WARN,
                    f"subnet {s.get('subnet_id')} ({s.get('cidr')})",
                    f"{used} of {total} addresses used on network "
                    f"{availability.network_name or availability.network_id}",
                    "add a subnet to the network (a larger one, or from the subnet pool), or "
                    "remove leaked ports (kuryr ports --orphans)"))
    return found


def _untagged(ports: list[resources.Port], *, grace: float) -> list[Finding]:
    # A create and its tagging are two calls: a port younger than ``grace`` may be between.
    now = datetime.datetime.now(datetime.UTC)
    return [Finding("untagged-port", WARN, p.id,
                    f"compute:kuryr port {p.name or '(no name)'} carries no kuryr tag and no "
                    "owner tag: no kuryr component will find or release it",
                    f"delete it if nothing uses it (openstack port delete {p.id}), or tag it "
                    f"(openstack port set --tag {tagging.KURYR} {p.id})")
            for p in ports
            if (inventory.age_of(p.created_at, now=now) or 0.0) >= grace
            and (inventory.owner_of(p).kind == inventory.KIND_UNKNOWN
                 or (tagging.KURYR not in p.tags
                     and inventory.owner_of(p).kind != inventory.KIND_POOL))]


async def _stale_interfaces(neutron: client.Neutron, db: ovs.Ovsdb,
                            owned: dict[str, dict[str, str]], port_ids: set[str], *,
                            bridge: str) -> list[Finding]:
    # Ports were listed before OVS was read: one made and plugged in between is looked up
    # again before it is called gone.
    gone = {}
    for name, ids in owned.items():
        port_id = ids.get("iface-id")
        if port_id and port_id not in port_ids:
            try:
                await neutron.get_port(port_id)
            except errors.NotFoundError:
                gone[name] = ids
    # Kept Neutron port, lost veth: the container's netns went away without a CNI DEL (the
    # veth dies with it). Looked at twice, a moment apart: an unplug under way removes the
    # link just before the OVS port.
    no_link = [name for name in sorted(set(owned) - set(gone))
               if not await asyncio.to_thread(interfaces.link_exists, name)]
    if no_link:
        await asyncio.sleep(1.0)
        no_link = [name for name in no_link
                   if name in await asyncio.to_thread(_owned_names, db, bridge)
                   and not await asyncio.to_thread(interfaces.link_exists, name)]
    found = [Finding("stale-ovs-interface", WARN, f"OVS interface {name}",
                     f"kuryr's interface on {bridge} for Neutron port {ids.get('iface-id')}, "
                     "which is gone",
                     f"remove it: ovs-vsctl --if-exists del-port {bridge} {name}")
             for name, ids in sorted(gone.items())]
    for name in no_link:
        port_id = owned[name].get("iface-id")
        found.append(Finding(
            "stale-ovs-interface", WARN, f"OVS interface {name}",
            f"kuryr's interface on {bridge} for Neutron port {port_id} has no veth on this "
            "host: its container's network namespace is gone",
            "release it: run the runtime's CNI DEL for the container, or "
            f"ovs-vsctl --if-exists del-port {bridge} {name} and, if nothing owns the port, "
            f"openstack port delete {port_id}"))
    return found

def _owned_names(db: ovs.Ovsdb, bridge: str) -> set[str]:
    return set(db.owned_ports(bridge))


async def _cni_networks(neutron: client.Neutron, conf_dirs: tuple[str, ...]) -> list[Finding]:
    found = []
    for path, conf in await asyncio.to_thread(status.kuryr_conflists, conf_dirs):
        for plugin in conf.get("plugins") or ():
            network = plugin.get("network") if plugin.get("type") == "kuryr" else None
            if not network:
                continue  # the daemon's Kubernetes mode: pods' networks come from the VIF
            try:
                await neutron.get_network(network)
                continue
            except errors.NotFoundError:
                pass
            found.append(Finding(
                "cni-network-missing", FAIL, f"conflist {path}",
                f"names Neutron network {network!r}, which does not exist: every container "
                "on it fails to start",
                f"create it (openstack network create {network}, and a subnet) or rewrite the "
                "conflist (kuryr install-cni --network <existing>)"))
    return found

