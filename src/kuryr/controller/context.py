"""What every handler of the controller needs, wired once at start-up: the Kubernetes and
Neutron clients, the settings, the informers' caches, the reactor and the port pool, and
what one term as leader remembers between handler runs (claims). Also the names kuryr writes
into Kubernetes (finalizers, annotations, tags), shared by the handlers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from kuryr import settings
from kuryr.controller import activating, observing, reacting
from kuryr.k8s import api, resources, watching
from kuryr.neutron import client, tagging
from kuryr.neutron import resources as neutron_resources
from kuryr.octavia import client as octavia_client
from kuryr.pools import nodes

POD_FINALIZER = "kuryr.openstack.org/pod-finalizer"
PORT_FINALIZER = "kuryr.openstack.org/kuryrport-finalizer"
NETWORK_FINALIZER = "kuryr.openstack.org/kuryrnetwork-finalizer"
LOADBALANCER_FINALIZER = "kuryr.openstack.org/kuryrloadbalancer-finalizers"  # upstream's
POLICY_FINALIZER = "kuryr.openstack.org/networkpolicy-finalizer"  # upstream's
PROJECT_ANNOTATION = "openstack.org/kuryr-project"
NODE_LABEL = resources.NODE_LABEL
ROUTER_INTERFACE = "network:router_interface"


def pod_tag(pod_uid: str) -> str:
    """The owner tag of a pod's Neutron port."""
    return tagging.owner("pod-uid", pod_uid)


def service_tag(service_uid: str) -> str:
    """The owner tag of a Service's Octavia objects and floating IP."""
    return tagging.owner("service-uid", service_uid)


def cluster_services_tag() -> str:
    """The owner tag of the cluster's Service security group (``servicegroups``)."""
    return tagging.owner("role", "services")


def cluster_role_tag(role: str) -> str:
    """The owner tag of one of the cluster's own security groups (``podgroups``)."""
    return tagging.owner("role", role)


def policy_tag(policy_uid: str) -> str:
    """The owner tag of a NetworkPolicy's security groups."""
    return tagging.owner("policy-uid", policy_uid)


def namespace_tag(namespace_uid: str) -> str:
    """The owner tag of a namespace's Neutron network and subnet."""
    return tagging.owner("namespace-uid", namespace_uid)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A port given to a pod whose KuryrPort status may not show it yet: the VIF written (or
    to write again) and, for a pool port, the pool's record of it."""

    port_id: str
    vif: dict[str, object]
    pooled: nodes.PooledPort | None = None


@dataclasses.dataclass
class AddressGroupState:
    """An address group of the cluster: its ID and the CIDRs it holds (canonical)."""

    id: str
    addresses: set[str]


@dataclasses.dataclass
class Context:
    """The controller's wiring; informers are keyed by resource plural."""

    config: settings.KuryrSettings
    kube: api.Kube
    neutron: client.Neutron
    reactor: reacting.Reactor
    metrics: observing.Metrics = dataclasses.field(default_factory=observing.Metrics)
    informers: dict[str, watching.Informer] = dataclasses.field(default_factory=dict)
    # Pod UID -> monotonic time this controller first saw the pod, until its VIF is active.
    pods_seen: dict[str, float] = dataclasses.field(default_factory=dict)
    pool: nodes.NodePools | None = None
    # Pod UID -> the port given to it, until the informer shows it in the KuryrPort status.
    claims: dict[str, Claim] = dataclasses.field(default_factory=dict)
    default_subnet: neutron_resources.Subnet | None = None  # pod_subnet, once looked up
    pod_router_id: str | None = None  # pod_router (a name or an ID) as an ID, once looked up
    # The ports waiting to be ACTIVE, looked at together (None: each KuryrPort polls its own).
    active_ports: activating.ActivePorts | None = None
    octavia: octavia_client.Octavia | None = None  # None: no Services ([kubernetes] service_subnet)
    service_subnet: neutron_resources.Subnet | None = None  # once looked up
    # Service UID -> monotonic time this controller first saw it, until its LB is complete.
    services_seen: dict[str, float] = dataclasses.field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    # The cluster's Service security group, and the groups of pod ports by project.
    services_group: neutron_resources.SecurityGroup | None = None
    pod_groups: dict[str | None, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # With [kubernetes] network_policy: the allow-all groups by direction (``podgroups``) and
    # the cluster's address groups as last seen in Neutron (``addressgroups``).
    allow_groups: dict[str, neutron_resources.SecurityGroup] = dataclasses.field(
        default_factory=dict)
    address_groups: dict[str, AddressGroupState] | None = None
    address_group_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # Port ID -> the security groups it was last given or seen with (``podgroups``).
    port_groups: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def cached(self, plural: str, namespace: str | None, name: str) -> api.Object | None:
        return self.informers[plural].get(namespace, name)
