"""Where a pod's Neutron port goes: its network, subnet and project (a ``Placement``).

Owns the two subnet drivers of ``[kubernetes] pod_subnets_driver`` (upstream's option):
``namespace``, where the port goes on the network of the namespace's KuryrNetwork (known once
its status names one) in the project its spec names; and ``default``, where every port goes on
the subnet ``pod_subnet`` in the project of the namespace's ``openstack.org/kuryr-project``
annotation (else ``[kubernetes] project_id``). Not the making of networks (``networks``).
"""

from __future__ import annotations

import dataclasses
import logging

from kuryr.controller import context, podgroups
from kuryr.k8s import api
from kuryr.neutron import resources

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Placement:
    """A port's network, subnet (None: the network's own), project (None: the Neutron
    credentials') and security groups (None: Neutron's default group; see
    ``servicegroups``)."""

    network_id: str
    subnet_id: str | None = None
    project_id: str | None = None
    security_group_ids: tuple[str, ...] | None = None


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
        return await _with_groups(ctx, Placement(
            subnet.network_id, subnet.id,
            project_of(ctx, ctx.cached("namespaces", None, namespace))))
    network = ctx.cached("kuryrnetworks", namespace, namespace)
    if network is None or network["metadata"].get("deletionTimestamp"):
        return None
    found = _of_network(network)
    return None if found is None else await _with_groups(ctx, found)


async def every(ctx: context.Context) -> set[Placement]:
    """The placements of every live namespace (what port pools are kept for). Raises
    NotFoundError, TemporaryError (default mode: the subnet is looked up once)."""
    if is_default_mode(ctx):
        subnet = await default_subnet(ctx)
        return {await _with_groups(ctx, Placement(subnet.network_id, subnet.id,
                                                  project_of(ctx, namespace)))
                for namespace in ctx.informers["namespaces"].objects.values()
                if not namespace["metadata"].get("deletionTimestamp")}
    found = (_of_network(n) for n in ctx.informers["kuryrnetworks"].objects.values()
             if not n["metadata"].get("deletionTimestamp"))
    return {await _with_groups(ctx, p) for p in found if p is not None}


async def _with_groups(ctx: context.Context, placement: Placement) -> Placement:
    """The placement with its ports' security groups: with NetworkPolicy, the groups of a
    port no policy isolates (``podgroups``; a pod's own are set when it gets its port); with
    Services, the project's ``default`` group and the cluster's Service group
    (``servicegroups``); else Neutron's default. Raises TemporaryError."""
    group = ctx.services_group
    if group is None:
        return placement
    if podgroups.is_on(ctx):  # NetworkPolicy: kuryr's groups, never the project's default
        return dataclasses.replace(placement, security_group_ids=podgroups.unisolated(ctx))
    project = placement.project_id or group.project_id
    groups = ctx.pod_groups.get(project)
    if groups is None:
        defaults = await ctx.neutron.list_security_groups(name="default", project_id=project)
        if not defaults:
            LOG.warning("project %s has no default security group: its pods get only the "
                        "Service group", project)
        groups = (defaults[0].id, group.id) if defaults else (group.id,)
        ctx.pod_groups[project] = groups
    return dataclasses.replace(placement, security_group_ids=groups)


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
