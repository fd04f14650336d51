"""``kuryr gc``: list (and with ``--apply`` remove) Neutron ports and networks, Octavia load
balancers and floating IPs tagged for this cluster whose pod, namespace, Node or Service no
longer exists, and the security groups and address groups of NetworkPolicies that are gone
(``kuryr.controller.collecting``; the leading controller also does this every
``[kubernetes] gc_interval``). Untagged resources are never touched."""

from __future__ import annotations

import asyncio

import click

from kuryr import errors, settings
from kuryr.cli import controller as controller_cli
from kuryr.controller import collecting
from kuryr.k8s import api
from kuryr.neutron import client, connecting
from kuryr.octavia import client as octavia_client


@click.command()
@controller_cli.kubernetes_options
@click.option("--apply", "is_apply", is_flag=True,
              help="Remove the orphans (default: only list them).")
def gc(config_file: str | None, kubeconfig: str | None, api_root: str | None,
       is_apply: bool) -> None:
    """Find Neutron and Octavia resources of this cluster whose Kubernetes owner (pod,
    namespace, Node, Service, NetworkPolicy) is gone (dry run unless --apply). Load balancers
    are looked at when [kubernetes] service_subnet is set."""
    config = controller_cli.with_kubernetes(settings.load(config_file), kubeconfig=kubeconfig,
                                            api_root=api_root)
    failed = asyncio.run(_collect(config, is_apply=is_apply))
    if failed:
        raise errors.TemporaryError("could not remove: " + "; ".join(failed))


async def _collect(config: settings.KuryrSettings, *, is_apply: bool) -> list[str]:
    kube = await api.connect(config.kubernetes)
    neutron = client.Neutron.from_settings(config)
    octavia = None
    if config.kubernetes.service_subnet:
        octavia = octavia_client.Octavia(
            connecting.connect(config.neutron,
                               load_balancer_endpoint=config.octavia.endpoint_override),
            base_tags=neutron.base_tags)
    try:
        orphans = await collecting.find_orphans(
            neutron, lambda: collecting.listed_owners(kube, config.cluster_id), octavia=octavia)
        verb = "removing" if is_apply else "would remove"
        for orphan in orphans:
            click.echo(f"{verb} {orphan.kind} {orphan.resource_id} {orphan.name!r} "
                       f"(owner {orphan.owner} is gone)")
        if not orphans:
            click.echo("no orphans")
        if not is_apply:
            if orphans:
                click.echo("dry run: nothing removed; run with --apply to remove")
            return []
        return await collecting.remove(neutron, orphans, octavia=octavia)
    finally:
        neutron.close()
        if octavia is not None:
            octavia.close()
        await kube.close()
