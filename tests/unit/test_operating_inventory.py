"""How ``kuryr ports`` reads a port's owner back from what each mode writes, and decides
orphans (no Neutron: ports as the facade returns them)."""

from __future__ import annotations

import datetime

from kuryr.neutron import resources, tagging
from kuryr.operating import inventory

NOW = datetime.datetime(2026, 12, 1, 15, 0, tzinfo=datetime.UTC)


def _port(*tags: str, name: str = "", host: str = "vm", port_id: str = "p1") -> resources.Port:
    return resources.Port(id=port_id, name=name, network_id="n", mac="fa:16:3e:00:00:01",
                          status="DOWN", fixed_ips=(resources.FixedIP("s", "10.0.0.5"),),
                          device_owner="compute:kuryr", host_id=host,
                          tags=(tagging.KURYR, *tags), created_at="2026-12-01T14:55:00Z")


def test_owners_of_each_mode() -> None:
    pod = inventory.owner_of(_port(tagging.owner("pod-uid", "u1"), name="ns/web"))
    assert (pod.kind, pod.label, pod.namespace, pod.key) == ("pod", "ns/web", "ns", "u1")
    cni = inventory.owner_of(_port(tagging.owner("cni-container", "c" * 64),
                                   tagging.owner("cni-ifname", "eth1")))
    assert (cni.kind, cni.label) == ("cni", "cccccccccccc/eth1")
    docker = inventory.owner_of(_port(tagging.owner("docker-endpoint", "e" * 64)))
    assert (docker.kind, docker.label) == ("docker", "endpoint eeeeeeeeeeee")
    pool = inventory.owner_of(_port(tagging.owner("pool-node", "n2"), tagging.owner("pool", "k")))
    assert (pool.kind, pool.label) == ("pool", "pool n2")
    batch = inventory.owner_of(_port(name="kuryr-pool-vm:docker-kuryr"))  # not tagged yet
    assert batch.kind == "pool"
    assert inventory.owner_of(_port(name="x")).kind == "unknown"


def test_orphans_only_where_decidable() -> None:
    cni = _port(tagging.owner("cni-container", "c"))
    assert inventory.view(cni, host="vm", iface_ids=set(), pod_uids=None, now=NOW).is_orphan
    assert inventory.view(cni, host="vm", iface_ids={"p1"}, pod_uids=None,
                          now=NOW).is_orphan is False
    assert inventory.view(cni, host="other", iface_ids=set(), pod_uids=None,
                          now=NOW).is_orphan is None
    pod = _port(tagging.owner("pod-uid", "u1"), name="ns/web")
    assert inventory.view(pod, host="vm", iface_ids=set(), pod_uids=None,
                          now=NOW).is_orphan is None
    assert inventory.view(pod, host="vm", iface_ids=set(), pod_uids={"u2"}, now=NOW).is_orphan


def test_age() -> None:
    view = inventory.view(_port(), host="vm", iface_ids=None, pod_uids=None, now=NOW)
    assert view.age_seconds == 300.0 and inventory.format_age(view.age_seconds) == "5m"
    assert inventory.format_age(None) == "-" and inventory.format_age(2 * 86400 + 5) == "2d"
