"""What ``kuryr status`` reports for this node and the cluster: Neutron (version, the
extensions kuryr uses), the OVN controller of this host, ``br-int``, the CNI daemon, the CNI
executable for each conflist naming it, the Docker plugin, the controller, pools and ports.

Owns the checks and their verdicts; does not own how they are printed (``kuryr.cli.status``).
Each check is ``ok``, ``warn``, ``fail`` or ``off`` (a part this node does not run: no socket,
no conflist, no controller configured), and only ``fail`` makes the whole status wrong: a part
that is there but does not answer, or a piece kuryr cannot work without.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import pathlib
import subprocess
from typing import Any

import aiohttp

from kuryr import errors, settings
from kuryr.linux import ovs
from kuryr.neutron import client, connecting, tagging
from kuryr.operating import inventory
from kuryr.ports import lifecycle

OK, WARN, FAIL, OFF = "ok", "warn", "fail", "off"

# Neutron extensions (aliases) kuryr calls: tags on ports, networks, subnets, security
# groups (standard-attr-tag), port binding (binding:host_id), security groups and port
# security, routers (pod_router, Services' routed subnets), subnet pools (namespace
# subnets, Docker IPAM), address groups (NetworkPolicy), trunks (the facade's nested ports).
REQUIRED_EXTENSIONS = ("standard-attr-tag", "binding", "security-group", "port-security",
                       "router", "subnet_allocation")
OPTIONAL_EXTENSIONS = ("address-group", "trunk")

CNI_CONF_DIRS = ("/etc/cni/net.d",)
CNI_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")
# "OVN Controller agent", or "OVN Controller Gateway agent" on a gateway chassis.
OVN_AGENT_BINARY = "ovn-controller"
_HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "detail": self.detail, **self.data}


def is_healthy(checks: list[Check]) -> bool:
    return all(c.state != FAIL for c in checks)


async def gather(config: settings.KuryrSettings, *,
                 cni_conf_dirs: tuple[str, ...] = CNI_CONF_DIRS,
                 cni_bin_dirs: tuple[str, ...] = CNI_BIN_DIRS) -> list[Check]:
    """Every check, in the order shown. Never raises for what it checks: a failure is a
    ``fail`` check."""
    checks: list[Check] = []
    try:
        conn = connecting.connect(config.neutron)
    except errors.KuryrError as e:
        return [Check("neutron", FAIL, str(e))]
    try:
        checks.append(await _neutron(conn))
        checks.append(await _ovn_agent(conn, host=config.binding.host))
    finally:
        conn.close()
    checks.append(await _bridge(config.binding))
    checks.append(await _cni_daemon(config.cni_daemon))
    checks.extend(await _cni_executables(cni_conf_dirs, cni_bin_dirs))
    checks.append(await _docker_plugin(config.libnetwork))
    checks.append(await _controller(config.kubernetes))
    if checks[0].state != FAIL:
        checks.extend(await _ports(config))
    return checks


async def _neutron(conn: Any) -> Check:
    def read() -> tuple[str, set[str]]:
        endpoint = conn.network.get_endpoint()
        root = endpoint.rstrip("/").removesuffix("/v2.0") + "/"
        versions = conn.session.get(root, endpoint_filter=None, raise_exc=False,
                                    authenticated=False).json().get("versions") or []
        current = next((v.get("id", "?") for v in versions if v.get("status") == "CURRENT"),
                       "?")
        aliases = {e.alias for e in conn.network.extensions()}
        return current, aliases

    try:
        version, aliases = await asyncio.to_thread(read)
    except Exception as e:  # the SDK and keystoneauth raise many types for one "unreachable"
        return Check("neutron", FAIL, f"unreachable: {e}")
    missing = [x for x in REQUIRED_EXTENSIONS if x not in aliases]
    optional = [x for x in OPTIONAL_EXTENSIONS if x not in aliases]
    data = {"version": version, "missing_extensions": missing,
            "missing_optional_extensions": optional}
    if missing:
        return Check("neutron", FAIL, f"API {version}; missing extensions kuryr needs: "
                     + ", ".join(missing), data)
    detail = f"API {version}, {len(REQUIRED_EXTENSIONS)} required extensions present"
    if optional:
        return Check("neutron", WARN, detail + "; without " + ", ".join(optional)
                     + " (NetworkPolicy / trunks will not work)", data)
    return Check("neutron", OK, detail, data)


async def _ovn_agent(conn: Any, *, host: str) -> Check:
    try:
        agents = await asyncio.to_thread(lambda: list(conn.network.agents()))
    except Exception as e:  # as above
        return Check("ovn-controller", FAIL, f"cannot list Neutron agents: {e}")
    ovn = [a for a in agents if a.binary == OVN_AGENT_BINARY]
    mine = [a for a in ovn if a.host == host]
    data = {"host": host, "chassis_hosts": sorted(a.host for a in ovn)}
    if not mine:
        return Check("ovn-controller", FAIL,
                     f"no OVN Controller agent with host {host!r} ([binding] host); chassis: "
                     + (", ".join(data["chassis_hosts"]) or "none")
                     + ". Ports bound to this host will stay DOWN", data)
    if not all(a.is_alive for a in mine):
        return Check("ovn-controller", FAIL, f"chassis {host} is not alive", data)
    return Check("ovn-controller", OK, f"chassis {host} alive", data)


async def _bridge(config: settings.BindingSettings) -> Check:
    db = ovs.Ovsdb(config.ovsdb_connection, timeout=min(config.ovsdb_timeout, 5.0))
    try:
        exists = await asyncio.to_thread(db.bridge_exists, config.ovs_bridge)
    except errors.KuryrError as e:
        return Check("ovs", FAIL, str(e))
    finally:
        await asyncio.to_thread(db.close)
    if not exists:
        return Check("ovs", FAIL, f"bridge {config.ovs_bridge} missing in "
                     f"{config.ovsdb_connection}")
    return Check("ovs", OK, f"bridge {config.ovs_bridge} present")


async def _http_get(url: str, *, unix: str | None = None, method: str = "GET"
                    ) -> tuple[int, str]:
    """Status and body. Raises aiohttp.ClientError, OSError, TimeoutError."""
    connector = aiohttp.UnixConnector(path=unix) if unix else None
    async with (aiohttp.ClientSession(connector=connector, timeout=_HTTP_TIMEOUT) as session,
                session.request(method, url) as response):
        return response.status, await response.text()


async def _cni_daemon(config: settings.CniDaemonSettings) -> Check:
    url = f"http://{config.health_address}:{config.health_port}/readyz"
    data = {"socket": config.socket, "readyz": url}
    if not await asyncio.to_thread(os.path.exists, config.socket):
        return Check("cni-daemon", OFF, f"not running here (no socket {config.socket})", data)
    try:
        code, body = await _http_get(url)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        return Check("cni-daemon", FAIL, f"socket {config.socket} present but {url} does not "
                     f"answer: {e or type(e).__name__}", data)
    if code != 200:
        return Check("cni-daemon", FAIL, f"not ready ({code}): {body.strip()[:200]}", data)
    return Check("cni-daemon", OK, f"ready ({config.mode} mode), socket {config.socket}", data)


def kuryr_conflists(conf_dirs: tuple[str, ...]) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    """The readable ``*.conflist`` files in ``conf_dirs`` with a plugin of type kuryr."""
    found = []
    for d in conf_dirs:
        for path in sorted(pathlib.Path(d).glob("*.conflist")):
            try:
                conf = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if any(p.get("type") == "kuryr" for p in conf.get("plugins") or ()):
                found.append((path, conf))
    return found


def _run_version(executable: pathlib.Path, conf: dict[str, Any]) -> tuple[bool, str]:
    plugin = next(p for p in conf["plugins"] if p.get("type") == "kuryr")
    stdin = json.dumps({"cniVersion": conf.get("cniVersion", "1.0.0"),
                        "name": conf.get("name", ""), **plugin})
    try:
        done = subprocess.run([str(executable)], input=stdin, capture_output=True, text=True,
                              timeout=10, env={**os.environ, "CNI_COMMAND": "VERSION"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    try:
        versions = json.loads(done.stdout).get("supportedVersions")
    except ValueError:
        versions = None
    if done.returncode != 0 or not versions:
        return False, (done.stdout + done.stderr).strip()[:200] or f"exit {done.returncode}"
    return True, ",".join(versions)


async def _cni_executables(conf_dirs: tuple[str, ...], bin_dirs: tuple[str, ...]
                           ) -> list[Check]:
    confs = await asyncio.to_thread(kuryr_conflists, conf_dirs)
    if not confs:
        return [Check("cni", OFF, "no conflist names kuryr in " + ", ".join(conf_dirs))]
    executables = [pathlib.Path(d, "kuryr") for d in bin_dirs
                   if await asyncio.to_thread(os.path.exists, os.path.join(d, "kuryr"))]
    checks = []
    for path, conf in confs:
        data = {"conflist": str(path), "network": conf.get("name")}
        if not executables:
            checks.append(Check("cni", FAIL, f"{path.name}: no kuryr executable in "
                                + ", ".join(bin_dirs) + " (kuryr install-cni)", data))
            continue
        ok, answer = await asyncio.to_thread(_run_version, executables[0], conf)
        data["executable"] = str(executables[0])
        checks.append(Check("cni", OK if ok else FAIL,
                            f"{path.name}: {executables[0]} VERSION "
                            + (f"answers {answer}" if ok else f"fails: {answer}"), data))
    return checks


async def _docker_plugin(config: settings.LibnetworkSettings) -> Check:
    data = {"socket": config.socket_path}
    if not await asyncio.to_thread(os.path.exists, config.socket_path):
        return Check("docker-plugin", OFF, f"not running here (no socket {config.socket_path})",
                     data)
    try:
        code, body = await _http_get("http://plugin/Plugin.Activate", unix=config.socket_path,
                                     method="POST")
        implements = json.loads(body).get("Implements") if code == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        return Check("docker-plugin", FAIL, f"{config.socket_path} does not answer "
                     f"/Plugin.Activate: {e or type(e).__name__}", data)
    if not implements:
        return Check("docker-plugin", FAIL, f"/Plugin.Activate answered {code}: {body[:200]}",
                     data)
    return Check("docker-plugin", OK, f"{config.socket_path} implements "
                 + ", ".join(implements), {**data, "implements": implements})


async def _controller(config: settings.KubernetesSettings) -> Check:
    base = f"http://{config.health_host}:{config.health_port}"
    data: dict[str, Any] = {"readyz": f"{base}/readyz"}
    if not (config.api_root or config.kubeconfig):
        return Check("controller", OFF, "no Kubernetes configured ([kubernetes] api_root or "
                     "kubeconfig)", data)
    try:
        code, _ = await _http_get(f"{base}/readyz")
        _, metrics = await _http_get(f"{base}/metrics")
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        return Check("controller", WARN, f"no controller answers on {base} (it may run on "
                     f"another node): {e or type(e).__name__}", data)
    leader = next((line.split()[-1] for line in metrics.splitlines()
                   if line.startswith("kuryr_controller_is_leader ")), None)
    data["is_leader"] = leader is not None and float(leader) == 1.0
    role = "leader" if data["is_leader"] else "follower"
    if code != 200:
        return Check("controller", FAIL, f"{role}, not ready ({code})", data)
    return Check("controller", OK, f"ready, {role} here", data)


async def _ports(config: settings.KuryrSettings) -> list[Check]:
    neutron = client.Neutron.from_settings(config)
    try:
        ports = await neutron.list_ports(device_owner=lifecycle.DEVICE_OWNER)
    except errors.KuryrError as e:
        return [Check("ports", FAIL, f"cannot list ports: {e}")]
    finally:
        neutron.close()
    by_status = collections.Counter(p.status for p in ports)
    pools: collections.Counter[str] = collections.Counter()
    for p in ports:
        owner = inventory.owner_of(p)
        if owner.kind == inventory.KIND_POOL:
            key = tagging.value_of(p.tags, inventory.POOL) or "?"
            pools[f"{owner.label} [{key}]"] += 1
    here = [p for p in ports if p.host_id == config.binding.host]
    down_here = sum(1 for p in here if p.status != "ACTIVE")
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"
    checks = [Check("ports", WARN if down_here else OK,
                    f"{len(ports)} kuryr port(s): {status_text}; {len(here)} on this host"
                    + (f", {down_here} not ACTIVE (see kuryr ports --node "
                       f"{config.binding.host})" if down_here else ""),
                    {"by_status": dict(by_status), "on_this_host": len(here),
                     "not_active_on_this_host": down_here})]
    checks.append(Check("pools", OK if pools else OFF,
                        "; ".join(f"{k}: {n}" for k, n in sorted(pools.items())) or "no pool ports",
                        {"pools": dict(pools)}))
    return checks
