"""Benchmark: attaching a container to Neutron (create port, plug, wait ACTIVE) and detaching it,
against a bare veth moved into a namespace and configured (the same netlink work, no Neutron,
no OVS) as the baseline. Prints medians, p90 and the ratio. Needs root and the local cloud.

    .venv/bin/python benchmarks/plug.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import time
import uuid

from kuryr import binding, settings
from kuryr.linux import interfaces, namespaces
from kuryr.neutron import client, tagging
from kuryr.ports import lifecycle

TAG = tagging.owner("benchmark", uuid.uuid4().hex[:6])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(name: str, values: list[float]) -> str:
    return (f"{name:<34} median {statistics.median(values) * 1000:7.1f} ms   "
            f"p90 {_pct(values, 0.9) * 1000:7.1f} ms")


def _bare_veth(ns: str, i: int) -> float:
    started = time.perf_counter()
    host, peer = f"bbh{i}", f"bbp{i}"
    interfaces.create_veth(host, peer, mac="fa:16:3e:aa:00:01", mtu=1442)
    interfaces.move_to_netns(peer, ns, new_ifname="eth0")
    interfaces.configure("eth0", netns=ns, mtu=1442, routes=[],
                         addresses=[ipaddress.ip_interface("10.123.0.5/24")],
                         gateways=[ipaddress.ip_address("10.123.0.1")])
    interfaces.set_up(host)
    interfaces.delete_link(host)
    return time.perf_counter() - started


async def main(runs: int) -> None:
    config = settings.load()
    neutron = client.Neutron.from_settings(config)
    binders = binding.binders(config.binding)
    ns = f"kb-{uuid.uuid4().hex[:6]}"
    namespaces.create(ns)
    net = await neutron.create_network(f"kb-{ns}", tags=[TAG])
    try:
        await neutron.create_subnet(net.id, cidr="10.123.0.0/24", tags=[TAG])
        baseline = [await asyncio.to_thread(_bare_veth, ns, i) for i in range(runs)]
        attach, detach = [], []
        for _ in range(runs):
            started = time.perf_counter()
            att = await lifecycle.attach(neutron, binders, network_id=net.id, netns=ns,
                                         ifname="eth0", host=config.binding.host, tags=[TAG])
            attach.append(time.perf_counter() - started)
            started = time.perf_counter()
            await lifecycle.detach(neutron, binders, port_id=att.port.id)
            detach.append(time.perf_counter() - started)
        print(f"{runs} runs each")
        print(_row("baseline: bare veth into netns", baseline))
        print(_row("attach (port, plug, ACTIVE)", attach))
        print(_row("detach (unplug, delete port)", detach))
        print(f"attach / baseline: {statistics.median(attach) / statistics.median(baseline):.1f}x")
    finally:
        for p in await neutron.list_ports(network_id=net.id):
            await neutron.delete_port(p.id)
        for s in await neutron.list_subnets(network_id=net.id):
            await neutron.delete_subnet(s.id)
        await neutron.delete_network(net.id)
        namespaces.remove(ns)
        for b in binders.values():
            b.close()
        neutron.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
