"""``kuryr ports``: kuryr's Neutron ports (``compute:kuryr``) with their owner, host, status,
addresses and age, as a table or JSON (``kuryr.operating.inventory`` reads and decides)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import click

from kuryr import settings
from kuryr.cli import controller as controller_cli
from kuryr.k8s import api
from kuryr.linux import ovs
from kuryr.neutron import client
from kuryr.operating import inventory

_COLUMNS = ("PORT", "OWNER", "KIND", "HOST", "STATUS", "ADDRESSES", "AGE", "ORPHAN")


@click.command()
@controller_cli.kubernetes_options
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Table for people, JSON for scripts.")
@click.option("--node", help="Only ports bound to this host (binding:host_id).")
@click.option("--namespace", "-n", help="Only ports of pods in this Kubernetes namespace.")
@click.option("--orphans", "is_orphans", is_flag=True,
              help="Only ports whose owner is gone (see below).")
def ports(config_file: str | None, kubeconfig: str | None, api_root: str | None, output: str,
          node: str | None, namespace: str | None, is_orphans: bool) -> None:
    """List kuryr's Neutron ports (device_owner compute:kuryr): pods' (owner namespace/name),
    CNI containers' (container ID/ifname), Docker endpoints' and pool ports.

    An orphan is a port whose owner is gone, decided only where that is reliable: a CNI
    container's or Docker endpoint's port bound to this host ([binding] host) with no OVS
    interface here (its release was cut short); a pod's port whose pod the Kubernetes API
    does not list (only when the API is configured: --kubeconfig, --api-root or
    [kubernetes]). Ports of other hosts, pool ports and pods without an API show "-"
    (undecided) and are never listed by --orphans. Nothing is changed: 'kuryr gc' and the
    daemons remove orphans.
    """
    config = controller_cli.with_kubernetes(settings.load(config_file), kubeconfig=kubeconfig,
                                            api_root=api_root)
    views, notes = asyncio.run(_gather(config))
    views = inventory.select(views, node=node, namespace=namespace, is_orphans=is_orphans)
    if output == "json":
        click.echo(json.dumps({"ports": [v.as_json() for v in views], "notes": notes},
                              indent=2))
        return
    for note in notes:
        click.secho(f"note: {note}", fg="yellow", err=True)
    rows = [(v.id, v.owner.label, v.owner.kind, v.host or "-", v.status,
             ",".join(v.addresses) or "-", inventory.format_age(v.age_seconds),
             {True: "yes", False: "no", None: "-"}[v.is_orphan]) for v in views]
    click.echo(format_table(_COLUMNS, rows))
    click.echo(f"{len(rows)} port(s)")


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain columns aligned on their widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _has_kubernetes(config: settings.KuryrSettings) -> bool:
    return bool(config.kubernetes.api_root or config.kubernetes.kubeconfig)


async def _gather(config: settings.KuryrSettings
                  ) -> tuple[list[inventory.PortView], list[str]]:
    neutron = client.Neutron.from_settings(config)
    ovsdb = ovs.Ovsdb(config.binding.ovsdb_connection, timeout=config.binding.ovsdb_timeout)
    kube = await api.connect(config.kubernetes) if _has_kubernetes(config) else None
    try:
        return await inventory.gather(neutron, host=config.binding.host, ovsdb=ovsdb,
                                      kube=kube)
    finally:
        neutron.close()
        await asyncio.to_thread(ovsdb.close)
        if kube is not None:
            await kube.close()
