"""Docker on Neutron through kuryr's libnetwork driver, with a real dockerd on the local cloud.

What a Docker user does (network create, run, exec ping, rm, network rm) and what they then see
in Neutron; adopted networks shared with plain namespaces; exposed ports as security groups;
restarts of the driver and of dockerd with containers running; and the errors a person gets.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kuryr import binding, settings
from kuryr.neutron import client, connecting, resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, binders, network  # noqa: F401  (fixtures)
from tests.conftest import RUN_ID, netns_run, unavailable
from tests.support import dockerd as support
from tests.support import peers

DOCKER_TAG_PREFIX = "kuryr-docker-"


class DockerEnv:
    def __init__(self, dockerd: support.Dockerd, driver: support.Driver, image: str) -> None:
        self.dockerd = dockerd
        self.driver = driver
        self.image = image
        self.name = driver.name

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.dockerd.docker(*args, check=check)

    def create_network(self, name: str, *args: str,
                       check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.docker("network", "create", "-d", self.name, "--ipam-driver", self.name,
                           *args, name, check=check)

    def run(self, name: str, net_name: str, *args: str, command: str = "sleep 600") -> None:
        self.docker("run", "-d", "--name", name, "--network", net_name, *args, self.image,
                    "sh", "-c", command)

    def endpoint(self, container: str, net_name: str) -> dict[str, Any]:
        settings_: Any = self.dockerd.inspect(container)["NetworkSettings"]
        return dict(settings_["Networks"][net_name])

    def ping(self, container: str, address: str) -> bool:
        return self.docker("exec", container, "ping", "-c", "2", "-W", "2", address,
                           check=False).returncode == 0


@pytest.fixture(scope="session")
def docker_env(cloud_config: settings.KuryrSettings,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEnv]:
    """Our own dockerd and kuryr driver (``kt-<run id>``) for the session, stopped by PID."""
    failure = support.install_packages()
    if failure:
        unavailable(f"cannot install {', '.join(support.PACKAGES)}: {failure}")
    root = tmp_path_factory.mktemp("docker")
    assert cloud_config.source is not None
    driver = support.Driver(f"kt-{RUN_ID}", config=cloud_config.source, log=root / "driver.log")
    dockerd = support.Dockerd(root / "engine")
    try:
        driver.start()
        dockerd.start()
        image = support.import_busybox(dockerd, root)
        yield DockerEnv(dockerd, driver, image)
    finally:
        if dockerd.process is not None:
            dockerd.remove_everything()
        dockerd.stop()
        dockerd.unmount()
        driver.stop()


def docker_resources(conn: Any) -> dict[str, tuple[str, ...]]:
    """Every Neutron resource that carries a Docker tag of kuryr, with its tags (the default
    subnet pools are kuryr's, made once: only their reservations count)."""
    found: dict[str, tuple[str, ...]] = {}
    net = conn.network
    for kind, listing in (("network", net.networks), ("subnet", net.subnets),
                          ("port", net.ports), ("subnet_pool", net.subnet_pools),
                          ("security_group", net.security_groups)):
        for r in listing():
            tags = tuple(sorted(t for t in (r.tags or ()) if t.startswith(DOCKER_TAG_PREFIX)
                                and not t.startswith("kuryr-docker-default-pool=")))
            named = (r.name or "").startswith(DOCKER_TAG_PREFIX) and "default" not in r.name
            if tags or named:
                found[f"{kind} {r.id} {r.name}"] = tags
    return found


@pytest.fixture
def conn(cloud_config: settings.KuryrSettings) -> Iterator[Any]:
    c = connecting.connect(cloud_config.neutron)
    yield c
    c.close()


def _unique() -> tuple[str, int]:
    n = uuid.uuid4().int % 200 + 20
    return f"kt-{RUN_ID}-{uuid.uuid4().hex[:4]}", n


def _post(socket_path: pathlib.Path, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """One call to the driver as Docker makes it."""

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(60)
            self.sock.connect(str(socket_path))

    connection = UnixConnection("localhost")
    try:
        connection.request("POST", path, body=body,
                           headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_containers_on_a_kuryr_network_talk_and_removal_leaves_neutron_as_it_was(
        docker_env: DockerEnv, conn: Any, cloud_config: settings.KuryrSettings) -> None:
    before = docker_resources(conn)
    name, n = _unique()
    v4, v6 = f"10.{n}.7.0/24", f"fd77:{n}::/64"
    docker_env.create_network(name, "--subnet", v4, "--ipv6", "--subnet", v6)
    try:
        docker_id = docker_env.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        nets = list(conn.network.networks(tags=[f"kuryr-docker-network={docker_id}"]))
        assert len(nets) == 1, "one Neutron network per Docker network"
        cidrs = sorted(s.cidr for s in conn.network.subnets(network_id=nets[0].id))
        assert cidrs == sorted([v4, v6])

        docker_env.run(f"{name}-a", name)
        docker_env.run(f"{name}-b", name)
        a, b = (docker_env.endpoint(f"{name}-{x}", name) for x in "ab")
        for ep in (a, b):
            ports = list(conn.network.ports(tags=[f"kuryr-docker-endpoint={ep['EndpointID']}"]))
            assert len(ports) == 1, "one Neutron port per endpoint"
            port = ports[0]
            assert port.status == "ACTIVE"
            assert port.device_owner == "compute:kuryr"
            assert port.binding_host_id == cloud_config.binding.host
            assert port.mac_address == ep["MacAddress"]
            assert sorted(f["ip_address"] for f in port.fixed_ips) == sorted(
                [ep["IPAddress"], ep["GlobalIPv6Address"]])
        routes = docker_env.docker("exec", f"{name}-a", "ip", "route").stdout
        assert f"default via 10.{n}.7.1" in routes, "the gateway from Join"
        assert docker_env.ping(f"{name}-a", b["IPAddress"]), "IPv4 ping a -> b"
        assert docker_env.ping(f"{name}-b", a["GlobalIPv6Address"]), "IPv6 ping b -> a"

        docker_env.docker("rm", "-f", f"{name}-a", f"{name}-b")
        assert not list(conn.network.ports(network_id=nets[0].id,
                                           device_owner="compute:kuryr")), "ports left"
    finally:
        docker_env.docker("rm", "-f", f"{name}-a", f"{name}-b", check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before


async def test_adopted_network_reaches_a_plain_netns_and_opens_only_exposed_ports(
        docker_env: DockerEnv, conn: Any, neutron: client.Neutron,
        network: resources.Network, binders: dict[str, binding.Binder],  # noqa: F811
        cloud_config: settings.KuryrSettings, make_netns: Callable[[], str]) -> None:
    host = cloud_config.binding.host
    subnets = await neutron.list_subnets(network_id=network.id)
    v4 = next(s for s in subnets if s.ip_version == 4)
    peer = await lifecycle.attach(neutron, binders, network_id=network.id, netns=make_netns(),
                                  ifname="eth0", host=host, tags=[TEST_TAG])
    group = await neutron.create_security_group(f"kt-{RUN_ID}-observer", tags=[TEST_TAG])
    name, _ = _unique()
    try:
        observer = await lifecycle.attach(neutron, binders, network_id=network.id,
                                          netns=make_netns(), ifname="eth0", host=host,
                                          tags=[TEST_TAG], security_group_ids=[group.id])
        network_tags = conn.network.get_network(network.id).tags
        before_subnets = {s.id: s.tags for s in subnets}
        docker_env.create_network(name, "--subnet", v4.cidr, "-o",
                                  f"neutron.net.uuid={network.id}")
        web = f"{name}-web"
        docker_env.run(web, name, "--expose", "8080",
                       command="httpd -p 8080 -h /; httpd -p 8081 -h /; sleep 600")
        ep = docker_env.endpoint(web, name)
        peer_ip = next(str(f.address.ip) for f in peer.vif.fixed_ips if f.address.version == 4)
        assert docker_env.ping(web, peer_ip), "container -> plain netns on the same network"
        assert peers.ping(peer.netns, ep["IPAddress"]), "plain netns -> container"

        assert _connects_eventually(observer.netns, ep["IPAddress"], 8080), "exposed port"
        assert not _connects(observer.netns, ep["IPAddress"], 8081), "unexposed port open"
        group_name = f"kuryr-docker-expose-{ep['EndpointID']}"
        assert list(conn.network.security_groups(name=group_name))

        docker_env.docker("rm", "-f", web)
        assert not list(conn.network.security_groups(name=group_name)), "exposure group left"
        docker_env.docker("network", "rm", name)
        assert conn.network.get_network(network.id).tags == network_tags
        assert {s.id: s.tags for s in await neutron.list_subnets(network_id=network.id)} == \
            before_subnets
        left = {p.id for p in await neutron.list_ports(network_id=network.id)
                if p.device_owner.startswith("compute:")}
        assert left == {peer.port.id, observer.port.id}
    finally:
        docker_env.docker("rm", "-f", f"{name}-web", check=False)
        docker_env.docker("network", "rm", name, check=False)
        for port in await neutron.list_ports(network_id=network.id):
            if group.id in port.security_group_ids:
                await lifecycle.detach(neutron, binders, port_id=port.id)
        await neutron.delete_security_group(group.id)


def _connects(netns: str, address: str, port: int) -> bool:
    code = ("import socket,sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
            "except OSError:\n sys.exit(1)\n")
    return netns_run(netns, "python3", "-c", code, address, str(port)).returncode == 0


def _connects_eventually(netns: str, address: str, port: int, tries: int = 5) -> bool:
    return any(_connects(netns, address, port) for _ in range(tries))


def test_bad_requests_and_neutron_failures_get_a_clear_err_and_leave_nothing(
        docker_env: DockerEnv, conn: Any, network: resources.Network) -> None:  # noqa: F811
    sock = docker_env.driver.socket
    status, body = _post(sock, "/NetworkDriver.CreateNetwork", b"{not json")
    assert status == 500 and "not valid JSON" in body["Err"]
    status, body = _post(sock, "/NetworkDriver.CreateNetwork", b'{"NetworkID": 5}')
    assert status == 500 and "NetworkID must be a string" in body["Err"]
    status, body = _post(sock, "/NetworkDriver.Teleport", b"{}")
    assert status == 404 and "does not serve" in body["Err"]
    unknown = json.dumps({"NetworkID": "0" * 64, "EndpointID": "1" * 64,
                          "Interface": {"Address": "10.9.9.9/24"}}).encode()
    status, body = _post(sock, "/NetworkDriver.CreateEndpoint", unknown)
    assert status == 500 and "has no Neutron network" in body["Err"]
    status, body = _post(sock, "/NetworkDriver.Join", unknown)
    assert status == 500 and "has no Neutron port" in body["Err"]
    status, body = _post(sock, "/NetworkDriver.DeleteNetwork", unknown)
    assert (status, body) == (200, {}), "deleting what is gone is success"
    status, body = _post(sock, "/IpamDriver.RequestAddress", b'{"PoolID": "nonsense"}')
    assert status == 500 and "not made by kuryr's IPAM" in body["Err"]

    before = docker_resources(conn)
    network_tags = conn.network.get_network(network.id).tags
    name, _ = _unique()
    missing = docker_env.create_network(name, "--subnet", "10.3.3.0/24", "-o",
                                        "neutron.net.name=kt-no-such-network", check=False)
    assert missing.returncode != 0
    assert "no such Neutron network" in missing.stderr
    # Neutron refuses the IPv6 subnet (it overlaps the network's own) after the IPv4 one was
    # adopted: everything done so far is undone.
    v4 = next(s for s in conn.network.subnets(network_id=network.id) if s.ip_version == 4)
    v6 = next(s for s in conn.network.subnets(network_id=network.id) if s.ip_version == 6)
    overlap = v6.cidr.replace("/64", "/63")
    refused = docker_env.create_network(name, "--subnet", v4.cidr, "--ipv6", "--subnet",
                                        overlap, "-o", f"neutron.net.uuid={network.id}",
                                        check=False)
    assert refused.returncode != 0, "Neutron should refuse an overlapping subnet"
    assert "kuryr" in refused.stderr and "Neutron answered" in refused.stderr
    assert conn.network.get_network(network.id).tags == network_tags
    assert docker_resources(conn) == before


def test_restarts_keep_containers_connected_and_networks_usable(
        docker_env: DockerEnv, conn: Any) -> None:
    before = docker_resources(conn)
    name, n = _unique()
    docker_env.create_network(name, "--internal", "--subnet", f"10.{n}.9.0/24")
    names = [f"{name}-{x}" for x in "abcde"]
    try:
        docker_env.run(names[0], name)
        docker_env.run(names[1], name)
        ip = {c: docker_env.endpoint(c, name)["IPAddress"] for c in names[:2]}
        assert docker_env.ping(names[0], ip[names[1]])
        routes = docker_env.docker("exec", names[0], "ip", "route").stdout
        assert "default" not in routes, "an --internal network has no default route"

        docker_env.driver.stop()
        docker_env.driver.start()
        assert docker_env.ping(names[0], ip[names[1]]), "after a driver restart"
        docker_env.run(names[2], name)
        assert docker_env.ping(names[2], ip[names[0]]), "new container after driver restart"

        docker_env.dockerd.stop()
        docker_env.dockerd.start()
        assert docker_env.ping(names[0], ip[names[1]]), "after a dockerd restart"
        docker_env.run(names[3], name)
        assert docker_env.ping(names[3], ip[names[1]]), "new container after dockerd restart"

        docker_env.dockerd.stop()
        docker_env.driver.stop()
        docker_env.driver.start()
        docker_env.dockerd.start()
        assert docker_env.ping(names[1], ip[names[0]]), "after restarting both"
        docker_env.run(names[4], name)
        assert docker_env.ping(names[4], ip[names[0]]), "new container after both restarted"

        docker_env.docker("rm", "-f", *names)
        docker_id = docker_env.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        assert not list(conn.network.ports(tags=[f"kuryr-docker-network={docker_id}"]))
    finally:
        docker_env.docker("rm", "-f", *names, check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before
