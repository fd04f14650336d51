"""The manifests in deploy/ hang together: workloads run kuryr commands with options those
commands have, kuryr.conf in the ConfigMap is valid for these settings, probes hit the
configured health ports, and every ServiceAccount, ConfigMap key and Lease verb used exists."""

from __future__ import annotations

import pathlib
from typing import Any

import click
import pytest
import yaml

from kuryr import settings
from kuryr.cli import main

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


DOCS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _workloads() -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] in ("Deployment", "DaemonSet")]


def _config() -> settings.KuryrSettings:
    text = _one("ConfigMap", "kuryr-config")["data"]["kuryr.conf"]
    return settings.parse(text)


def test_kuryr_conf_in_the_config_map_is_valid() -> None:
    config = _config()
    assert config.kubernetes.leader_election
    assert config.kubernetes.lease_duration < 10


def test_controller_runs_two_replicas_and_the_daemon_installs_the_cni_executable() -> None:
    controller = _one("Deployment", "kuryr-controller")
    assert controller["spec"]["replicas"] == 2
    daemon = _one("DaemonSet", "kuryr-daemon")["spec"]["template"]["spec"]
    assert [c["command"][:2] for c in daemon["initContainers"]] == [["kuryr", "install-cni"]]
    assert [c["command"][:2] for c in daemon["containers"]] == [["kuryr", "daemon"]]


@pytest.mark.parametrize("workload", _workloads(), ids=lambda w: w["metadata"]["name"])
def test_workload_commands_options_and_references_exist(workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    _one("ServiceAccount", pod["serviceAccountName"])
    mounts = {v["name"]: v for v in pod["volumes"]}
    for volume in mounts.values():
        if "configMap" in volume:
            data = _one("ConfigMap", volume["configMap"]["name"])["data"]
            assert all(item["key"] in data for item in volume["configMap"].get("items", []))
    config = _config()
    health_ports = {"controller": config.kubernetes.health_port,
                    "daemon": config.cni_daemon.health_port}
    with click.Context(main.main) as ctx:
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            command = container["command"]
            assert command[0] == "kuryr"
            sub = main.main.get_command(ctx, command[1])
            assert sub is not None, f"no command kuryr {command[1]}"
            options = {o: p for p in sub.params for o in p.opts}
            for word, following in zip(command[2:], [*command[3:], None], strict=True):
                if word.startswith("--"):
                    assert word in options, f"kuryr {command[1]} has no option {word}"
                    kind = options[word].type
                    if isinstance(kind, click.Choice):
                        assert following in kind.choices, (word, following)
                if word.startswith("$("):
                    assert word[2:-1] in {e["name"] for e in container.get("env", [])}
            for ref in container.get("env", []):
                key = ref.get("valueFrom", {}).get("configMapKeyRef")
                if key:
                    assert key["key"] in _one("ConfigMap", key["name"])["data"]
            if "--config" in command:
                path = command[command.index("--config") + 1]
                assert any(path.startswith(m["mountPath"] + "/")
                           for m in container["volumeMounts"] if m["name"] == "config")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in container:
                    get = container[probe]["httpGet"]
                    assert get["host"] == "127.0.0.1"
                    assert get["port"] == health_ports[command[1]], (command[1], probe)


def test_controller_rbac_covers_its_lease_and_objects() -> None:
    binding = _one("RoleBinding", "kuryr-controller-lease")
    assert binding["subjects"][0]["name"] == "kuryr-controller"
    role = _one("Role", binding["roleRef"]["name"])
    config = _config().kubernetes
    assert role["metadata"]["namespace"] == config.lease_namespace
    verbs = {v for rule in role["rules"] if "leases" in rule["resources"]
             for v in rule["verbs"]
             if config.lease_name in rule.get("resourceNames", [config.lease_name])}
    assert {"create", "get", "update"} <= verbs
    cluster_role = _one("ClusterRole", "kuryr-controller")
    granted = {(group, resource, verb) for rule in cluster_role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    informed = {(group, resource, verb) for group, resource in (
        ("", "pods"), ("", "namespaces"), ("", "nodes"), ("", "services"),
        ("discovery.k8s.io", "endpointslices"), ("openstack.org", "kuryrports"),
        ("openstack.org", "kuryrnetworks"), ("openstack.org", "kuryrloadbalancers"),
        ("networking.k8s.io", "networkpolicies"), ("openstack.org", "kuryrnetworkpolicies"),
        ("openstack.org", "kuryrnodepools"))
        for verb in ("get", "list", "watch")}
    assert informed <= granted, informed - granted
    assert {("", "pods", "patch"), ("", "events", "create"),
            ("openstack.org", "kuryrports/status", "patch"),
            ("openstack.org", "kuryrnetworks/status", "patch"),
            ("", "services/status", "patch"),
            ("openstack.org", "kuryrloadbalancers", "create"),
            ("openstack.org", "kuryrloadbalancers", "update"),
            ("openstack.org", "kuryrloadbalancers", "delete"),
            ("openstack.org", "kuryrloadbalancers/status", "patch"),
            ("openstack.org", "kuryrnetworkpolicies", "create"),
            ("openstack.org", "kuryrnetworkpolicies", "update"),
            ("openstack.org", "kuryrnetworkpolicies", "delete"),
            ("openstack.org", "kuryrnetworkpolicies/status", "patch"),
            ("openstack.org", "kuryrnodepools", "create"),
            ("openstack.org", "kuryrnodepools", "delete"),
            ("openstack.org", "kuryrnodepools/status", "patch")} <= granted
    assert not {(g, r, v) for g, r, v in granted
                if r in ("services", "endpointslices", "networkpolicies")
                and v not in ("get", "list", "watch")}, \
        "the controller only reads Services (but their status), EndpointSlices and policies"
    assert not {(g, r, v) for g, r, v in granted
                if r in ("pods", "namespaces", "nodes") and v in ("create", "delete", "update")}, \
        "the controller never creates, deletes or replaces Pods, Namespaces or Nodes"
    assert {crd["spec"]["names"]["plural"] for crd in DOCS
            if crd["kind"] == "CustomResourceDefinition"} == {
                "kuryrports", "kuryrnetworks", "kuryrloadbalancers", "kuryrnetworkpolicies",
                "kuryrnodepools"}


def test_daemon_runs_in_kubernetes_mode_on_its_node_without_openstack_credentials() -> None:
    pod = _one("DaemonSet", "kuryr-daemon")["spec"]["template"]["spec"]
    (install,) = pod["initContainers"]
    assert "--kubernetes" in install["command"] and "--network" not in install["command"]
    (daemon,) = pod["containers"]
    command = daemon["command"]
    assert command[command.index("--mode") + 1] == "kubernetes"
    env = {e["name"]: e for e in daemon.get("env", [])}
    assert env["KURYR_BINDING_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounted = {m["name"] for c in [*pod["initContainers"], *pod["containers"]]
               for m in c["volumeMounts"]}
    secrets = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert not mounted & secrets, "the daemon needs no secret: it never calls Neutron"
    assert _config().cni_daemon.vif_timeout < 150, "within the CNI executable's own bound"


def test_daemon_rbac_is_least_privilege() -> None:
    account = _one("ServiceAccount", "kuryr-daemon")
    assert account.get("automountServiceAccountToken", True), "Kubernetes mode needs a token"
    binding = _one("ClusterRoleBinding", "kuryr-daemon")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kuryr-daemon",
                                    "namespace": "kube-system"}]
    role = _one("ClusterRole", binding["roleRef"]["name"])
    granted = {(group, resource, verb) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert granted == {("openstack.org", "kuryrports", "list"),
                       ("openstack.org", "kuryrports", "watch"),
                       ("openstack.org", "kuryrnodepools", "list"),
                       ("openstack.org", "kuryrnodepools", "watch"),
                       ("", "events", "create")}
    assert not [d for d in DOCS if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and d["metadata"]["name"] != "kuryr-daemon"
                and any(s["name"] == "kuryr-daemon" for s in d["subjects"])]
