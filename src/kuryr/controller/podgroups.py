"""The security groups of a pod's port when ``[kubernetes] network_policy`` is on.

Every pod port gets, and only gets:
- the cluster group (``servicegroups``): ingress from the nodes' addresses (kubelet probes,
  which the spec requires to work whatever the policies say) and, with Services, from the
  VIPs (hairpin) and the LoadBalancer Services' source ranges;
- ``kuryr-allow-ingress-<cluster>`` unless a policy isolates the pod for ingress, and
  ``kuryr-allow-egress-<cluster>`` unless one isolates it for egress;
- the group of each policy that selects it (its variant for the pod's named ports).
Never the project's ``default`` group, whose ingress-from-its-members rule would leak around
every policy. A policy whose group is not made yet still isolates the pod: until then the pod
allows less than it will, never more.
"""

from __future__ import annotations

import logging

from kuryr import errors
from kuryr.controller import context, policyspec, sgrules
from kuryr.k8s import api

LOG = logging.getLogger(__name__)
ALLOW = {"ingress": "allow-ingress", "egress": "allow-egress"}


def is_on(ctx: context.Context) -> bool:
    return ctx.config.kubernetes.network_policy


async def ensure_allow_groups(ctx: context.Context) -> None:
    """Find or make the two allow-all groups (by tag, then name) and their rules. Raises
    TemporaryError, PermanentError."""
    neutron = ctx.neutron
    for direction, role in ALLOW.items():
        tag = context.cluster_role_tag(role)
        name = f"kuryr-{role}-{ctx.config.cluster_id}"
        found = await neutron.list_security_groups(tags=[*neutron.base_tags, tag])
        if not found:
            found = await neutron.list_security_groups(name=name)
        group = found[0] if found else await neutron.create_security_group(
            name, description=f"kuryr: all {direction} of pods no policy isolates", tags=[tag])
        await sgrules.sync(ctx, group.id, [sgrules.canonical(direction, "IPv4"),
                                           sgrules.canonical(direction, "IPv6")],
                           description=f"kuryr: all {direction}")
        ctx.allow_groups[direction] = group
    LOG.info("allow-all security groups: ingress %s, egress %s",
             ctx.allow_groups["ingress"].id, ctx.allow_groups["egress"].id)


def unisolated(ctx: context.Context) -> tuple[str, ...]:
    """The groups of a port no policy isolates (pool ports are made with these)."""
    return tuple(g.id for g in (ctx.services_group, ctx.allow_groups.get("ingress"),
                                ctx.allow_groups.get("egress")) if g is not None)


def of_pod(ctx: context.Context, pod: api.Object) -> tuple[str, ...]:
    """The groups the pod's port must have now, from the informers' caches. Raises
    TemporaryError before the cluster's groups are known."""
    if ctx.services_group is None or len(ctx.allow_groups) < 2:
        raise errors.TemporaryError("the cluster's security groups are not made yet")
    view = policyspec.pod_view(pod, ())
    groups: list[str] = [ctx.services_group.id]
    isolated: set[str] = set()
    for policy in ctx.informers["networkpolicies"].in_namespace(view.namespace):
        if not policyspec.selects(policy, view):
            continue
        isolated.update(policyspec.policy_types(policy))
        group = _policy_group(ctx, policy, view)
        if group is not None:
            groups.append(group)
    for direction, group_ in (("Ingress", ctx.allow_groups["ingress"]),
                              ("Egress", ctx.allow_groups["egress"])):
        if direction not in isolated:
            groups.append(group_.id)
    return tuple(sorted(set(groups)))


def _policy_group(ctx: context.Context, policy: api.Object,
                  view: policyspec.PodView) -> str | None:
    meta = policy["metadata"]
    knp = ctx.cached("kuryrnetworkpolicies", meta["namespace"], meta["name"])
    if knp is None or knp["metadata"].get("deletionTimestamp"):
        return None
    if owner_uid(knp) != meta["uid"]:
        return None
    variant, _ = policyspec.variant_rules(knp.get("spec") or {}, view)
    found = ((knp.get("status") or {}).get("securityGroups") or {}).get(variant or "base")
    return str(found) if found else None


def owner_uid(knp: api.Object) -> str | None:
    for ref in knp["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "NetworkPolicy":
            return str(ref["uid"])
    return None


async def handle_pod(ctx: context.Context, namespace: str, name: str) -> float | None:
    """Give the pod's port (the one its KuryrPort status names) the pod's groups, if it has
    others. What a port has is remembered (``Context.port_groups``) once set or read, so a
    policy change costs one Neutron call per pod whose groups change, none for the rest."""
    pod = ctx.cached("pods", namespace, name)
    kuryr_port = ctx.cached("kuryrports", namespace, name)
    if pod is None or kuryr_port is None or pod["metadata"].get("deletionTimestamp"):
        return None
    vif = (((kuryr_port.get("status") or {}).get("vifs") or {}).get("eth0") or {}).get("vif")
    port_id = vif.get("port_id") if isinstance(vif, dict) else None
    if not port_id:
        return None  # the port is given its groups when it is made or taken from the pool
    wanted = of_pod(ctx, pod)
    have = ctx.port_groups.get(str(port_id))
    if have is None:
        try:
            port = await ctx.neutron.get_port(str(port_id))
        except errors.NotFoundError:
            return None  # the KuryrPort's handler gives the pod another
        have = tuple(sorted(port.security_group_ids))
    if set(have) != set(wanted):
        await ctx.neutron.update_port(str(port_id), security_group_ids=list(wanted))
        LOG.info("pod %s/%s: security groups %s", namespace, name, ",".join(wanted))
    ctx.port_groups[str(port_id)] = wanted
    return None
