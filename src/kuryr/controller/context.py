"""What every handler of the controller needs, wired once at start-up: the Kubernetes and
Neutron clients, the settings, the informers' caches and the reactor. Also the names kuryr
writes into Kubernetes (finalizers, annotations, tags), shared by the handlers."""

from __future__ import annotations

import dataclasses

from kuryr import settings
from kuryr.controller import observing, reacting
from kuryr.k8s import api, watching
from kuryr.neutron import client, tagging

POD_FINALIZER = "kuryr.openstack.org/pod-finalizer"
PORT_FINALIZER = "kuryr.openstack.org/kuryrport-finalizer"
NETWORK_FINALIZER = "kuryr.openstack.org/kuryrnetwork-finalizer"
PROJECT_ANNOTATION = "openstack.org/kuryr-project"
NODE_LABEL = "kuryr.openstack.org/nodeName"
ROUTER_INTERFACE = "network:router_interface"


def pod_tag(pod_uid: str) -> str:
    """The owner tag of a pod's Neutron port."""
    return tagging.owner("pod-uid", pod_uid)


def namespace_tag(namespace_uid: str) -> str:
    """The owner tag of a namespace's Neutron network and subnet."""
    return tagging.owner("namespace-uid", namespace_uid)


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

    def cached(self, plural: str, namespace: str | None, name: str) -> api.Object | None:
        return self.informers[plural].get(namespace, name)
