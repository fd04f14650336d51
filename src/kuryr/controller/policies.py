"""NetworkPolicies: a policy's KuryrNetworkPolicy, and the KuryrNetworkPolicy's security
groups in Neutron.

A NetworkPolicy gets a KuryrNetworkPolicy of the same name (finalizer, ownerReference to the
policy) whose spec is its translation (``policyspec``), rewritten whenever the translation
changes (a named egress port resolving to a new number, a Service's endpoints). The
KuryrNetworkPolicy gets one security group per variant (``policyspec.variant_rules``: the base
group, and one per distinct resolution of named ingress ports among the selected pods),
tagged with the policy's UID, its rules made exactly the spec's (``sgrules``), the address
groups they refer to made first (``addressgroups``). Its status: upstream's
``securityGroupId`` (the base group), ``securityGroupRules`` and ``podSelector``, and kuryr's
``securityGroups`` (variant -> ID), ``addressGroups`` (name -> ID) and ``conditions``.

Deleting the policy deletes the KuryrNetworkPolicy; its finalizer waits until no port uses
its groups (the pods' groups are recomputed without the policy, ``podgroups``), then deletes
them. Errors (a quota, a rule Neutron refuses) become an Event and a ``Failed`` condition
(``running``); what was applied stays applied.
"""

from __future__ import annotations

import logging
from typing import Any

from kuryr import errors
from kuryr.controller import (
    addressgroups,
    context,
    placing,
    podgroups,
    policyspec,
    policyview,
    reporting,
    sgrules,
)
from kuryr.k8s import api, resources

LOG = logging.getLogger(__name__)


async def handle_policy(ctx: context.Context, namespace: str, name: str) -> float | None:
    """Create, update or delete the policy's KuryrNetworkPolicy."""
    policy = ctx.cached("networkpolicies", namespace, name)
    knp = ctx.cached("kuryrnetworkpolicies", namespace, name)
    if policy is None or policy["metadata"].get("deletionTimestamp"):
        if knp is not None and not knp["metadata"].get("deletionTimestamp"):
            await ctx.kube.delete(resources.KURYR_NETWORK_POLICIES, namespace, name)
        return None
    meta = policy["metadata"]
    if knp is not None and podgroups.owner_uid(knp) != meta["uid"]:
        if not knp["metadata"].get("deletionTimestamp"):
            await ctx.kube.delete(resources.KURYR_NETWORK_POLICIES, namespace, name)
        raise errors.TemporaryError(f"networkpolicy {namespace}/{name}: the security groups "
                                    "of its predecessor are being released", delay=1.0)
    try:
        spec = policyspec.translate(policy, policyview.build(ctx),
                                    cluster_id=ctx.config.cluster_id)
    except ValueError as e:
        raise errors.PermanentError(f"networkpolicy {namespace}/{name}: {e}") from e
    if knp is None:
        await ctx.kube.create(resources.KURYR_NETWORK_POLICIES, namespace, {
            "metadata": {"name": name, "namespace": namespace,
                         "finalizers": [context.POLICY_FINALIZER],
                         "ownerReferences": [{"apiVersion": "networking.k8s.io/v1",
                                              "kind": "NetworkPolicy", "name": name,
                                              "uid": meta["uid"], "blockOwnerDeletion": True}]},
            "spec": spec})
        LOG.info("networkpolicy %s/%s: KuryrNetworkPolicy created", namespace, name)
    elif knp.get("spec") != spec:
        await ctx.kube.replace(resources.KURYR_NETWORK_POLICIES, namespace, name,
                               {"metadata": knp["metadata"], "spec": spec,
                                **({"status": knp["status"]} if "status" in knp else {})})
    return None


async def handle_kuryrpolicy(ctx: context.Context, namespace: str,
                             name: str) -> float | None:
    """Make the KuryrNetworkPolicy's security groups match its spec; release them when it
    is deleted."""
    knp = ctx.cached("kuryrnetworkpolicies", namespace, name)
    if knp is None:
        return None
    uid = podgroups.owner_uid(knp)
    if uid is None:
        raise errors.PermanentError(f"KuryrNetworkPolicy {namespace}/{name} has no owner")
    groups = await ctx.neutron.list_security_groups(
        tags=[*ctx.neutron.base_tags, context.policy_tag(uid)])
    if knp["metadata"].get("deletionTimestamp"):
        await _release(ctx, knp, [g.id for g in groups])
        return None
    try:
        return await _apply(ctx, knp, uid, groups)
    except errors.QuotaExceededError as e:
        # Reported like any PermanentError, but looked at again: raising the quota is how
        # an operator fixes it, and that changes no Kubernetes object.
        await reporting.report(ctx, resources.KURYR_NETWORK_POLICIES, namespace, name, e)
        raise errors.TemporaryError(f"KuryrNetworkPolicy {namespace}/{name}: {e}",
                                    delay=10.0) from e


async def _apply(ctx: context.Context, knp: api.Object, uid: str,
                 groups: list[Any]) -> float | None:
    namespace, name = knp["metadata"]["namespace"], knp["metadata"]["name"]
    spec = knp.get("spec") or {}
    view = policyview.build(ctx)
    group_ids = await addressgroups.ensure(ctx, policyspec.peers_of(spec), view)
    policy = ctx.cached("networkpolicies", namespace, name)
    variants: dict[str, list[dict[str, Any]]] = {}
    _, base_rules = policyspec.variant_rules(spec, None)
    variants["base"] = base_rules
    if policy is not None:
        for pod in view.pods:
            if policyspec.selects(policy, pod):
                variant, rules = policyspec.variant_rules(spec, pod)
                variants.setdefault(variant or "base", rules)
    by_name = {g.name: g for g in groups}
    made: dict[str, str] = {}
    base_made: list[Any] = []
    for variant, rules in sorted(variants.items()):
        group_name = _group_name(ctx, namespace, name, variant)
        group = by_name.get(group_name)
        if group is None:
            group = await ctx.neutron.create_security_group(
                group_name, description=f"kuryr: networkpolicy {namespace}/{name}",
                tags=[context.policy_tag(uid)],
                project_id=placing.project_of(ctx, ctx.cached("namespaces", None, namespace)))
            LOG.info("networkpolicy %s/%s: security group %s", namespace, name, group.id)
        wanted = [sgrules.of_spec(r["sgRule"], address_group_id=group_ids.get(
            (r.get("remoteAddressGroup") or {}).get("name", ""))) for r in rules]
        now = await sgrules.sync(ctx, group.id, wanted,
                                 description=f"kuryr: networkpolicy {namespace}/{name}")
        made[variant] = group.id
        if variant == "base":
            base_made = now
    status: dict[str, Any] = {
        "securityGroupId": made["base"], "podSelector": spec.get("podSelector") or {},
        "securityGroupRules": [_rule_status(r) for r in sorted(base_made, key=lambda r: r.id)],
        "securityGroups": made, "addressGroups": group_ids, "conditions": None}
    current = knp.get("status") or {}
    if any(current.get(k) != v for k, v in status.items()):
        # A merge patch keeps the keys it does not name: name the gone ones as null.
        patch = dict(status)
        for key in ("securityGroups", "addressGroups"):
            gone = set(current.get(key) or {}) - set(status[key])
            patch[key] = {**{k: None for k in gone}, **status[key]}
        await ctx.kube.patch(resources.KURYR_NETWORK_POLICIES, namespace, name,
                             {"status": patch}, status=True)
    # Variants no selected pod resolves to any more: gone once no port uses them.
    for group in groups:
        if group.id not in made.values() and not _held(ctx, group.id):
            try:
                await ctx.neutron.delete_security_group(group.id)
            except errors.PermanentError as e:
                LOG.debug("security group %s: not deleted yet: %s", group.id, e)
    return None


async def _release(ctx: context.Context, knp: api.Object, group_ids: list[str]) -> None:
    meta = knp["metadata"]
    for group_id in sorted(group_ids):
        if _held(ctx, group_id):
            raise errors.TemporaryError(f"security group {group_id}: a pod's port is still "
                                        "being moved off it", delay=0.5)
        try:
            await ctx.neutron.delete_security_group(group_id)
        except errors.NotFoundError:
            continue
        except errors.PermanentError as e:  # a port has it still: its pod is being updated
            raise errors.TemporaryError(f"security group {group_id} still in use: {e}",
                                        delay=0.5) from e
    await ctx.kube.set_finalizer(resources.KURYR_NETWORK_POLICIES, knp,
                                 context.POLICY_FINALIZER, present=False)
    LOG.info("networkpolicy %s/%s: security groups released", meta["namespace"], meta["name"])


def _held(ctx: context.Context, group_id: str) -> bool:
    """Whether a port still had the group when kuryr last set or read its groups. Neutron
    lets a group be deleted once its ports' database rows no longer name it, before ML2/OVN
    has moved them between port groups; a port update whose OVN transaction then meets the
    deleted port group fails whole (ML2 logs it, the API call succeeds), leaving the port out
    of its new groups in OVN. So a group goes only once every update of ours that moves a
    port off it has returned."""
    return any(group_id in groups for groups in ctx.port_groups.values())


def _group_name(ctx: context.Context, namespace: str, name: str, variant: str) -> str:
    base = f"kuryr-np-{ctx.config.cluster_id}-{namespace}-{name}"
    return base if variant == "base" else f"{base}-{variant}"


def _rule_status(rule: Any) -> dict[str, Any]:
    found = {"id": rule.id, "security_group_id": rule.security_group_id,
             "direction": rule.direction, "ethertype": rule.ethertype,
             "protocol": rule.protocol, "port_range_min": rule.port_range_min,
             "port_range_max": rule.port_range_max,
             "remote_ip_prefix": rule.remote_ip_prefix,
             "remote_address_group_id": rule.remote_address_group_id,
             "description": rule.description}
    return {k: v for k, v in found.items() if v is not None}

