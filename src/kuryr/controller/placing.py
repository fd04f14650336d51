"""Where a pod's Neutron port goes: its network, subnet and project (a ``Placement``).

Owns the two subnet drivers of ``[kubernetes] pod_subnets_driver`` (upstream's option):
``namespace``, where the port goes on the network of the namespace's KuryrNetwork (known once
its status names one) in the project its spec names; and ``default``, where every port goes on
the subnet ``pod_subnet`` in the project of the namespace's ``openstack.org/kuryr-project``
annotation (else ``[kubernetes] project_id``). Not the making of networks (``networks``).
"""

from __future__ import annotations

import dataclasses

from kuryr.controller import context
from kuryr.k8s import api
from kuryr.neutron import resources


@dataclasses.dataclass(frozen=True)
class Placement:
    """A port's network, subnet (None: the network's own) and project (None: the Neutron
    credentials')."""

    network_id: str
    subnet_id: str | None = None
    project_id: str | None = None


def is_default_mode(ctx: context.Context) -> bool:
    return ctx.config.kubernetes.pod_subnets_driver == "default"


def project_of(ctx: context.Context, namespace: api.Object | None) -> str | None:
    """The project of a namespace's resources: its annotation, else ``project_id``."""
    annotations = ((namespace or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(context.PROJECT_ANNOTATION) or ctx.config.kubernetes.project_id \
        or None


async def of_namespace(ctx: context.Context, namespace: str) -> Placement | None:
    """Where the ports of ``namespace`` go; None while its network is not made yet.
    Raises NotFoundError (no ``pod_subnet``), TemporaryError."""
    if is_default_mode(ctx):
        subnet = await default_subnet(ctx)
        return Placement(subnet.network_id, subnet.id,
                         project_of(ctx, ctx.cached("namespaces", None, namespace)))
    network = ctx.cached("kuryrnetworks", namespace, namespace)
    if network is None or network["metadata"].get("deletionTimestamp"):
        return None
    return _of_network(network)


async def every(ctx: context.Context) -> set[Placement]:
    """The placements of every live namespace (what port pools are kept for). Raises
    NotFoundError, TemporaryError (default mode: the subnet is looked up once)."""
    if is_default_mode(ctx):
        subnet = await default_subnet(ctx)
        return {Placement(subnet.network_id, subnet.id, project_of(ctx, namespace))
                for namespace in ctx.informers["namespaces"].objects.values()
                if not namespace["metadata"].get("deletionTimestamp")}
    found = (_of_network(n) for n in ctx.informers["kuryrnetworks"].objects.values()
             if not n["metadata"].get("deletionTimestamp"))
    return {p for p in found if p is not None}


def _of_network(network: api.Object) -> Placement | None:
    network_id = (network.get("status") or {}).get("netId")
    if not network_id:
        return None
    return Placement(str(network_id),
                     project_id=(network.get("spec") or {}).get("projectId") or None)


async def default_subnet(ctx: context.Context) -> resources.Subnet:
    """``[kubernetes] pod_subnet``, looked up once per term. Raises NotFoundError,
    TemporaryError."""
    if ctx.default_subnet is None:
        name = ctx.config.kubernetes.pod_subnet or ""
        ctx.default_subnet = await ctx.neutron.get_subnet(name)
    return ctx.default_subnet
