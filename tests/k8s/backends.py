"""Pods for the Service tests: made in the API double, plugged into real network namespaces by
CNI ADD through the ``kuryr`` executable and a Kubernetes-mode daemon, their IP written into
the pod status as the kubelet does (so the double's EndpointSlice stand-in lists them), each
running a who-answers server (``tests.support.echo``); and clients asking a VIP who answers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from kuryr import model
from tests.k8s.conftest import Cluster, eventually
from tests.support import cni, k8s

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@dataclasses.dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    netns: str
    container_id: str
    ip: str
    server: subprocess.Popen[str] | None = None


class Pods:
    """Starts and stops plugged pods; stops every server it started at ``close``."""

    def __init__(self, cluster: Cluster, daemon: cni.DaemonProcess, executable: pathlib.Path,
                 make_netns: Callable[[], str]) -> None:
        self.cluster = cluster
        self.daemon = daemon
        self.executable = executable
        self.make_netns = make_netns
        self.pods: list[Pod] = []

    async def start(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                    container_ports: Iterable[dict[str, Any]] = (), tcp: Iterable[int] = (),
                    udp: Iterable[int] = ()) -> Pod:
        made = self.cluster.create_node()["metadata"]["name"]
        pod = self.cluster.api.store.create(k8s.PODS, namespace, {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": made, "containers": [
                {"name": "c", "image": "i", "ports": list(container_ports)}]}})
        uid = pod["metadata"]["uid"]
        raw = await eventually(lambda: self.cluster.vif(namespace, name),
                               what=f"VIF of {namespace}/{name}", within=60)
        vif = model.VIF.from_dict(raw)
        netns = self.make_netns()
        container_id = uuid.uuid4().hex
        rc, result = await asyncio.to_thread(
            cni.invoke, self.executable, "ADD", cni.kubernetes_netconf(self.daemon.socket),
            container_id=container_id, netns=f"/run/netns/{netns}",
            env={"CNI_ARGS": cni.pod_args(namespace, name, uid, container_id)})
        assert rc == 0, result
        ip = str(vif.fixed_ips[0].address.ip)
        found = Pod(namespace, name, uid, netns, container_id, ip)
        self.pods.append(found)
        tcp, udp = list(tcp), list(udp)
        if tcp or udp:
            found.server = _serve(netns, name, tcp, udp)
            assert found.server.stdout is not None
            line = await asyncio.to_thread(found.server.stdout.readline)
            assert line.strip() == "ready", line
        self.cluster.api.set_pod_ip(namespace, name, ip, ready=True)
        return found

    async def stop(self, pod: Pod) -> None:
        """As the kubelet does: the pod marked deleted, its sandbox torn down (CNI DEL), then
        the pod gone."""
        self._kill(pod)
        rc, result = await asyncio.to_thread(
            cni.invoke, self.executable, "DEL", cni.kubernetes_netconf(self.daemon.socket),
            container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
            env={"CNI_ARGS": cni.pod_args(pod.namespace, pod.name, pod.uid,
                                          pod.container_id)})
        assert rc == 0, result
        self.cluster.delete_pod(pod.namespace, pod.name)
        self.pods.remove(pod)

    @staticmethod
    def _kill(pod: Pod) -> None:
        if pod.server is not None and pod.server.poll() is None:
            pod.server.kill()
            pod.server.wait()

    async def close(self) -> None:
        for pod in list(self.pods):
            self._kill(pod)
            await asyncio.to_thread(
                cni.invoke, self.executable, "DEL", cni.kubernetes_netconf(self.daemon.socket),
                container_id=pod.container_id, netns=f"/run/netns/{pod.netns}",
                env={"CNI_ARGS": cni.pod_args(pod.namespace, pod.name, pod.uid,
                                              pod.container_id)})


async def ask(netns: str, host: str, port: int, *, count: int = 12, protocol: str = "tcp",
              timeout: float = 1.0) -> list[str]:
    """``count`` fresh connections (or datagrams) from ``netns`` to host:port: the answers
    (``<server name> <client address seen>``) or ``fail ...``."""
    done = await asyncio.to_thread(
        subprocess.run,
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.support.echo", "ask",
         host, str(port), str(count), str(timeout), protocol],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
        timeout=count * (timeout + 1) + 20)
    return done.stdout.split("\n")[:-1]


def _serve(netns: str, name: str, tcp: list[int], udp: list[int]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.support.echo", "serve",
         name, ",".join(map(str, tcp)), ",".join(map(str, udp))],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})


def answered_by(answers: list[str]) -> set[str]:
    return {a.split()[0] for a in answers if not a.startswith("fail")}


async def reach(netns: str, host: str, port: int, *, expect: set[str], protocol: str = "tcp",
                within: float = 60, count: int = 12) -> list[str]:
    """Ask until every answer comes and the servers answering are exactly ``expect``."""
    last: list[list[str]] = [[]]

    async def check() -> bool:
        last[0] = await ask(netns, host, port, count=count, protocol=protocol)
        return (len(last[0]) == count and all(not a.startswith("fail") for a in last[0])
                and answered_by(last[0]) == expect)

    try:
        await eventually(check, within=within,
                         what=f"{protocol} {host}:{port} answered by exactly {sorted(expect)}")
    except BaseException:
        print("last answers:", last[0])
        raise
    return last[0]


def create_service(cluster: Cluster, namespace: str, name: str, *,
                   ports: list[dict[str, Any]], selector: dict[str, str] | None = None,
                   **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": ports, **spec}
    if selector is not None:
        body["selector"] = selector
    return cluster.api.store.create(k8s.SERVICES, namespace,
                                    {"metadata": {"name": name}, "spec": body})


def cluster_ip(service: dict[str, Any]) -> str:
    return str(service["spec"]["clusterIP"])


async def klb_ready(cluster: Cluster, namespace: str, name: str, *, members: int,
                    within: float = 90) -> dict[str, Any]:
    """The KuryrLoadBalancer once its status shows a load balancer and ``members`` members."""
    def check() -> dict[str, Any] | None:
        klb = cluster.get(k8s.KURYR_LOAD_BALANCERS, namespace, name)
        status = (klb or {}).get("status") or {}
        if (status.get("loadbalancer") or {}).get("id") and \
                len(status.get("members") or []) == members:
            return klb
        return None

    found: dict[str, Any] = await eventually(check, within=within,
                                             what=f"KuryrLoadBalancer {namespace}/{name} "
                                                  f"with {members} members")
    return found
