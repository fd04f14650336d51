"""Docker on Neutron through kuryr's libnetwork driver, with a real dockerd on the local cloud.

What a Docker user does (network create, run, exec ping, rm, network rm) and what they then see
in Neutron; adopted networks shared with plain namespaces; exposed ports as security groups;
restarts of the driver and of dockerd with containers running; and the errors a person gets.
The driver runs with its warm pool on (the default): containers take ready ports of the pool,
with no Neutron call on their way up, and give them back in the background; the driver
SIGKILLed before those background releases (or before a taken port's retag) leaves nothing
leaked or shared once restarted. One test runs the driver with the pool off.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kuryr import binding, settings
from kuryr.binding import ovs as ovs_binding
from kuryr.libnetwork import mapping
from kuryr.linux import interfaces
from kuryr.neutron import client, connecting, resources, tagging
from kuryr.pools import warm
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, binders, network  # noqa: F401  (fixtures)
from tests.conftest import RUN_ID, netns_run, unavailable
from tests.support import dockerd as support
from tests.support import peers

DOCKER_TAG_PREFIX = "kuryr-docker-"


class DockerEnv:
    def __init__(self, dockerd: support.Dockerd, driver: support.Driver, image: str, *,
                 host: str) -> None:
        self.dockerd = dockerd
        self.driver = driver
        self.image = image
        self.name = driver.name
        # The tag of the driver's own pool ports (warm.PortPool named after the driver).
        self.pool_tag = tagging.owner(warm.TAG_POOL_HOST, f"{host}:docker-{driver.name}")

    def kill_driver(self) -> None:
        """SIGKILL the driver (by its PID): nothing of it runs any more, no cleanup."""
        process = self.driver.process
        assert process is not None
        process.kill()
        process.wait()
        self.driver.process = None
        self.driver.socket.unlink(missing_ok=True)  # else start() sees the old socket

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
        yield DockerEnv(dockerd, driver, image, host=cloud_config.binding.host)
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


def _eventually(check: Callable[[], Any], *, what: str, timeout: float = 90) -> Any:
    """The first true value of ``check()``; fails after ``timeout`` seconds (background work:
    pool refills, releases, retags, Neutron's ACTIVE)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout:g} s")
        time.sleep(0.3)


def _network_of(docker_env: DockerEnv, conn: Any, name: str) -> Any:
    docker_id = docker_env.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()
    (net,) = conn.network.networks(tags=[f"kuryr-docker-network={docker_id}"])
    return net


def _ready_pool(docker_env: DockerEnv, conn: Any, network_id: str, *,
                count: int = 3) -> dict[str, Any]:
    """The driver's pool ports of a network once ``count`` of them are ACTIVE, by MAC."""
    def ready() -> dict[str, Any]:
        ports = [p for p in conn.network.ports(network_id=network_id,
                                               tags=[docker_env.pool_tag])
                 if p.status == "ACTIVE"]
        return {p.mac_address: p for p in ports} if len(ports) >= count else {}
    found: dict[str, Any] = _eventually(ready, what=f"{count} ready pool ports")
    return found


def _endpoint_port(conn: Any, endpoint_id: str) -> Any:
    ports = list(conn.network.ports(tags=[mapping.endpoint_tag(endpoint_id)]))
    return ports[0] if len(ports) == 1 else None


_CALL = re.compile(r"Neutron call (?P<operation>[a-z ]+): (?P<result>\w+) in [\d.]+ ms, "
                   r"for (?P<call>\S+)")
_WRITES = ("create", "update", "delete", "tag", "untag", "add", "remove", "set", "clear")


def _neutron_calls(log: pathlib.Path, since: int) -> list[tuple[str, str]]:
    """(Docker call, Neutron operation) of every Neutron call the driver logged after byte
    ``since`` of its log (``background``: the pool's and the releases' own work)."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [(m["call"], m["operation"]) for m in _CALL.finditer(text)]


def _host_links(port_ids: set[str]) -> list[str]:
    """The host-side links of these ports still there: their tap and Docker's peer name."""
    found = []
    for port_id in port_ids:
        for name in (ovs_binding.host_ifname(port_id), mapping.peer_ifname(port_id)):
            if interfaces.link_exists(name):
                found.append(name)
    return found


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
            # Tags follow in the background for a pool port, and a plugged port counts as
            # ready once ovn-controller installed it (Neutron says ACTIVE a little later).
            port = _eventually(lambda ep=ep: (p := _endpoint_port(conn, ep["EndpointID"]))
                               and p.status == "ACTIVE" and p, what="one ACTIVE port per "
                               "endpoint")
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
        _eventually(lambda: not list(conn.network.ports(tags=[f"kuryr-docker-network="
                                                              f"{docker_id}"])),
                    what="the endpoints' ports released")
        left = list(conn.network.ports(network_id=nets[0].id, device_owner="compute:kuryr"))
        assert all(docker_env.pool_tag in p.tags for p in left), "only pool ports are left"
    finally:
        docker_env.docker("rm", "-f", f"{name}-a", f"{name}-b", check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before
    assert not list(conn.network.ports(network_id=nets[0].id)), "the pool went with the network"


def test_containers_start_on_ready_pool_ports_with_no_neutron_call_and_give_them_back(
        docker_env: DockerEnv, conn: Any) -> None:
    """With the pool on, a container's port is one that was ready in the pool before it
    started (plugged, ACTIVE); ``docker run --rm`` makes no Neutron call on its way up or
    down; the pool refills; removal releases every port in the background, and nothing is
    left once the network goes."""
    before = docker_resources(conn)
    name, n = _unique()
    docker_env.create_network(name, "--subnet", f"10.{n}.8.0/24", "--ipv6", "--subnet",
                              f"fd78:{n}::/64")
    names = [f"{name}-a", f"{name}-b"]
    seen: set[str] = set()
    net = _network_of(docker_env, conn, name)
    try:
        ready = _ready_pool(docker_env, conn, net.id)  # filled from CreateNetwork on
        seen |= {p.id for p in ready.values()}
        docker_env.run(names[0], name)
        docker_env.run(names[1], name, "--expose", "8080")
        a, b = (docker_env.endpoint(c, name) for c in names)
        for ep in (a, b):
            assert ep["MacAddress"] in ready, "the container's port was not a ready pool port"
            pooled = ready[ep["MacAddress"]]
            assert sorted(f["ip_address"] for f in pooled.fixed_ips) == sorted(
                [ep["IPAddress"], ep["GlobalIPv6Address"]])
            port = _eventually(lambda ep=ep: _endpoint_port(conn, ep["EndpointID"]),
                               what="the pool port retagged for its endpoint")
            assert port.id == pooled.id and docker_env.pool_tag not in port.tags
            assert port.device_id == ep["EndpointID"]
        assert a["MacAddress"] != b["MacAddress"]
        routes = docker_env.docker("exec", names[0], "ip", "route").stdout
        assert f"default via 10.{n}.8.1" in routes, "the gateway from Join"
        assert docker_env.ping(names[0], b["IPAddress"]), "IPv4 ping a -> b"
        assert docker_env.ping(names[1], a["GlobalIPv6Address"]), "IPv6 ping b -> a"
        group = f"kuryr-docker-expose-{b['EndpointID']}"
        assert list(conn.network.security_groups(name=group)), "exposed on a pool port"

        refilled = _ready_pool(docker_env, conn, net.id)  # refilled in the background
        assert not {a["MacAddress"], b["MacAddress"]} & set(refilled)
        seen |= {p.id for p in refilled.values()}

        # A whole container's life on a ready pool: not one Neutron call for it.
        since = docker_env.driver.log.stat().st_size
        done = docker_env.docker("run", "--rm", "--network", name, docker_env.image, "ip",
                                 "link")
        assert not any(mac in done.stdout for mac in (a["MacAddress"], b["MacAddress"]))
        assert any(mac in done.stdout for mac in refilled), "not a pool port"
        calls = [c for c in _neutron_calls(docker_env.driver.log, since) if c[0] != "background"]
        assert calls == [], f"Neutron calls on the hot path of docker run --rm: {calls}"
        # Its addresses were announced once Docker had configured the interface.
        # (A second send 0.2 s later may find the interface gone with the container.)
        said = docker_env.driver.log.read_bytes()[since:].decode(errors="replace")
        failed = [line for line in said.splitlines() if "were not announced" in line
                  or ("cannot announce" in line and " again on " not in line)]
        assert failed == [], failed

        docker_id = _docker_id(docker_env, name)
        docker_env.docker("rm", "-f", *names)
        _eventually(lambda: not list(conn.network.security_groups(name=group)),
                    what="the exposure group removed")
        _eventually(lambda: not list(conn.network.ports(
            tags=[mapping.network_tag(docker_id)])), what="the endpoints' ports released")
        # Released: recycled into the pool (ACTIVE, plugged in its namespace) or deleted; no
        # more ports than the pool's size, and no host link of any port but the pool's.
        def settled() -> list[Any]:
            ports = list(conn.network.ports(network_id=net.id))
            ready_now = [p for p in ports if docker_env.pool_tag in p.tags
                         and p.status == "ACTIVE" and p.device_owner == "compute:kuryr"]
            return ports if len(ports) == len(ready_now) == 3 else []
        left = _eventually(settled, what="the pool back to 3 ready ports, nothing else")
        seen |= {p.id for p in left}
        pool_ids = {p.id for p in left}
        assert _host_links(seen - pool_ids) == [], "host links of released ports"
        assert sorted(_host_links(pool_ids)) == sorted(ovs_binding.host_ifname(i)
                                                       for i in pool_ids), "pool ports' taps"
        assert all(interfaces.link_exists(warm.pool_ifname(i), netns=warm.POOL_NETNS)
                   for i in pool_ids), "pool ports plugged in the pool namespace"
    finally:
        docker_env.docker("rm", "-f", *names, check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before
    assert not list(conn.network.ports(network_id=net.id)), "the pool went with the network"
    assert _host_links(seen) == [], "host links left"


def _docker_id(docker_env: DockerEnv, name: str) -> str:
    return docker_env.docker("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()


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
        _eventually(lambda: not list(conn.network.ports(
            tags=[f"kuryr-docker-network={docker_id}"])), what="the endpoints' ports released")
    finally:
        docker_env.docker("rm", "-f", *names, check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before


def test_driver_killed_before_its_background_work_leaves_nothing_leaked_or_shared(
        docker_env: DockerEnv, conn: Any) -> None:
    """The driver SIGKILLed right after a container was removed (its DeleteEndpoint answered,
    the port's background release not done) and right after another one started on a pool
    port (its retag possibly not landed: when it did, the pool tags are put back, which is what
    a kill before it leaves in Neutron). Restarted, the driver keeps the live containers' ports
    (given back to their endpoints from the record on their OVS Interface, never reused),
    releases the removed container's port, and leaves nothing once all is removed."""
    before = docker_resources(conn)
    name, n = _unique()
    docker_env.create_network(name, "--subnet", f"10.{n}.6.0/24", "--ipv6", "--subnet",
                              f"fd76:{n}::/64")
    peer, gone, keep, new = (f"{name}-{x}" for x in ("peer", "gone", "keep", "new"))
    names = [peer, gone, keep, new]
    seen: set[str] = set()
    net = _network_of(docker_env, conn, name)
    try:
        ready = _ready_pool(docker_env, conn, net.id)
        seen |= {p.id for p in ready.values()}
        docker_env.run(peer, name)
        docker_env.run(gone, name)
        ready = _ready_pool(docker_env, conn, net.id, count=1)
        seen |= {p.id for p in ready.values()}
        gone_ep = docker_env.endpoint(gone, name)
        gone_port = _eventually(lambda: _endpoint_port(conn, gone_ep["EndpointID"]),
                                what="gone's port retagged")
        docker_env.run(keep, name)
        docker_env.docker("rm", "-f", gone)
        docker_env.kill_driver()  # DeleteEndpoint answered; its release runs in the background
        keep_ep, peer_ep = docker_env.endpoint(keep, name), docker_env.endpoint(peer, name)
        assert keep_ep["MacAddress"] in ready, "keep did not get a pool port"
        keep_port = ready[keep_ep["MacAddress"]]
        time.sleep(2)  # a request the driver sent before it died has reached Neutron by now
        pool_tags = [t for t in keep_port.tags if t.startswith("kuryr-pool")]
        if mapping.endpoint_tag(keep_ep["EndpointID"]) in conn.network.get_port(
                keep_port.id).tags:
            conn.network.set_tags(conn.network.get_port(keep_port.id),
                                  [t for t in keep_port.tags])  # as before the retag
        assert pool_tags and set(pool_tags) <= set(conn.network.get_port(keep_port.id).tags)
        cut_short = bool(list(conn.network.ports(
            tags=[mapping.endpoint_tag(gone_ep["EndpointID"])])))
        assert docker_env.ping(keep, peer_ep["IPAddress"]), "keep lost its network meanwhile"

        docker_env.driver.start()
        # Rebuilt before it served: keep's port is keep's again, plugged, never reused.
        kept = conn.network.get_port(keep_port.id)
        assert mapping.endpoint_tag(keep_ep["EndpointID"]) in kept.tags
        assert docker_env.pool_tag not in kept.tags
        assert docker_env.ping(keep, peer_ep["IPAddress"]), "keep after the restart"
        assert docker_env.ping(peer, keep_ep["GlobalIPv6Address"]), "peer -> keep after it"
        # gone's port: released (recycled into the pool or deleted), by the restarted driver if
        # the kill cut its release short.
        _eventually(lambda: not list(conn.network.ports(
            tags=[mapping.endpoint_tag(gone_ep["EndpointID"])])), what="gone's port released")
        log = docker_env.driver.log.read_text()
        assert not cut_short or f"releasing port {gone_port.id}" in log
        docker_env.run(new, name)
        new_ep = docker_env.endpoint(new, name)
        live = [peer_ep, keep_ep, new_ep]
        assert len({ep["MacAddress"] for ep in live}) == 3, "a port shared by two containers"
        assert len({ep["IPAddress"] for ep in live}) == 3
        for ep in live:
            port = _eventually(lambda ep=ep: _endpoint_port(conn, ep["EndpointID"]),
                               what="one port per live endpoint")
            seen.add(port.id)
        assert docker_env.ping(new, keep_ep["IPAddress"]), "new -> keep"

        docker_env.docker("rm", "-f", *names)
        docker_id = _docker_id(docker_env, name)
        _eventually(lambda: not list(conn.network.ports(tags=[mapping.network_tag(docker_id)])),
                    what="every endpoint's port released")
    finally:
        if docker_env.driver.process is None:
            docker_env.driver.start()
        docker_env.docker("rm", "-f", *names, check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before
    assert not list(conn.network.ports(network_id=net.id)), "ports left on the network"
    assert _host_links(seen) == [], "host links left"


def test_without_the_pool_containers_get_ports_of_their_own(docker_env: DockerEnv,
                                                            conn: Any) -> None:
    """``[libnetwork] pool_enabled = false``: no pool port is made; each container's port is
    made for it and deleted with it, as before the pool."""
    docker_env.driver.stop()
    docker_env.driver.start(KURYR_LIBNETWORK_POOL_ENABLED="false")
    before = docker_resources(conn)
    name, n = _unique()
    names = [f"{name}-a", f"{name}-b"]
    try:
        docker_env.create_network(name, "--subnet", f"10.{n}.5.0/24", "--ipv6", "--subnet",
                                  f"fd75:{n}::/64")
        net = _network_of(docker_env, conn, name)
        for container in names:
            docker_env.run(container, name)
        a, b = (docker_env.endpoint(c, name) for c in names)
        assert docker_env.ping(names[0], b["IPAddress"])
        assert docker_env.ping(names[1], a["GlobalIPv6Address"])
        assert not list(conn.network.ports(network_id=net.id, tags=[docker_env.pool_tag]))
        docker_env.docker("rm", "-f", *names)
        assert not list(conn.network.ports(network_id=net.id, device_owner="compute:kuryr")), \
            "deleted before DeleteEndpoint answered"
    finally:
        docker_env.docker("rm", "-f", *names, check=False)
        docker_env.docker("network", "rm", name, check=False)
        docker_env.driver.stop()
        docker_env.driver.start()
    assert docker_resources(conn) == before


def test_two_networks_of_one_subnet_are_separate_and_removed_apart(
        docker_env: DockerEnv, conn: Any) -> None:
    """Two Docker networks given the same ``--subnet``: each its own Neutron network (and
    subnet pool), both usable at once, the same address on both, each container reaching only
    its own network; ``docker network rm`` of one leaves the other working. A CIDR of a subnet
    pool named with ``--ipam-opt neutron.pool.uuid`` is still one network's at a time."""
    before = docker_resources(conn)
    (name_a, n), (name_b, _) = _unique(), _unique()
    cidr = f"10.{n}.9.0/24"
    containers = [f"{name_a}-1", f"{name_a}-2", f"{name_b}-1", f"{name_b}-2"]
    try:
        docker_env.create_network(name_a, "--subnet", cidr)
        docker_env.create_network(name_b, "--subnet", cidr)
        net_a, net_b = _network_of(docker_env, conn, name_a), _network_of(docker_env, conn, name_b)
        assert net_a.id != net_b.id
        for net in (net_a, net_b):
            assert [s.cidr for s in conn.network.subnets(network_id=net.id)] == [cidr]
            _ready_pool(docker_env, conn, net.id)  # its pool ports hold addresses already
        held = {f["ip_address"] for net in (net_a, net_b)
                for p in conn.network.ports(network_id=net.id) for f in p.fixed_ips}
        both, only_b = [a for a in (f"10.{n}.9.{i}" for i in range(50, 250))
                        if a not in held][:2]  # both: on both networks; only_b: on B only
        docker_env.run(containers[1], name_a, "--ip", both)
        docker_env.run(containers[2], name_b, "--ip", both)
        docker_env.run(containers[3], name_b, "--ip", only_b)
        docker_env.run(containers[0], name_a)  # last: the refill it starts takes addresses
        for container, net_name, net in ((containers[1], name_a, net_a),
                                         (containers[2], name_b, net_b)):
            ep = docker_env.endpoint(container, net_name)
            assert ep["IPAddress"] == both
            port = _eventually(lambda ep=ep: _endpoint_port(conn, ep["EndpointID"]),
                               what="the endpoint's port")
            assert port.network_id == net.id, "the port is on its own network's Neutron network"
        assert docker_env.ping(containers[0], both), "A reaches its own .50"
        assert docker_env.ping(containers[2], only_b), "B reaches its own .60"
        assert not docker_env.ping(containers[0], only_b), "A does not reach B's .60"

        docker_env.docker("rm", "-f", containers[0], containers[1])
        docker_env.docker("network", "rm", name_a)
        assert not list(conn.network.networks(id=net_a.id)), "A's Neutron network is gone"
        assert [s.cidr for s in conn.network.subnets(network_id=net_b.id)] == [cidr]
        assert docker_env.ping(containers[2], only_b), "B still works after A went"
        docker_env.run(f"{name_b}-3", name_b)
        containers.append(f"{name_b}-3")
        assert docker_env.ping(f"{name_b}-3", both), "and takes new containers"
    finally:
        for container in containers:
            docker_env.docker("rm", "-f", container, check=False)
        for name in (name_a, name_b):
            docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before

    # A named subnet pool keeps today's rule: one of its CIDRs serves one network at a time.
    pool = conn.network.create_subnet_pool(name=f"kt-{RUN_ID}-named-{n}",
                                           prefixes=[f"10.{n}.10.0/24"],
                                           default_prefix_length=26)
    try:
        conn.network.set_tags(pool, [TEST_TAG])  # Neutron takes no tags in the POST
        opts = ["--ipam-opt", f"neutron.pool.uuid={pool.id}", "--subnet", f"10.{n}.10.0/26"]
        docker_env.create_network(name_a, *opts)
        refused = docker_env.create_network(name_b, *opts, check=False)
        assert refused.returncode != 0
        assert "already the pool of another Docker network" in refused.stderr, refused.stderr
    finally:
        docker_env.docker("network", "rm", name_a, name_b, check=False)
        docker_env.docker("network", "rm", name_a, check=False)
        conn.network.delete_subnet_pool(pool.id, ignore_missing=True)
    assert docker_resources(conn) == before


def test_ip_range_aux_addresses_and_gateway_shape_the_subnet(
        docker_env: DockerEnv, conn: Any) -> None:
    """``--ip-range`` is the subnet's allocation pool, ``--aux-address`` addresses are kept
    out of it, ``--gateway`` is the subnet's gateway; a range that leaves nothing to allocate
    is refused, naming it, and leaves nothing behind."""
    before = docker_resources(conn)
    name, n = _unique()
    base = f"10.{n}.11"
    docker_env.create_network(name, "--subnet", f"{base}.0/24", "--ip-range", f"{base}.128/28",
                              "--gateway", f"{base}.254", "--aux-address", f"h1={base}.130")
    try:
        net = _network_of(docker_env, conn, name)
        (subnet,) = conn.network.subnets(network_id=net.id)
        assert subnet.gateway_ip == f"{base}.254"
        assert sorted(subnet.allocation_pools, key=lambda p: int(p["start"].split(".")[3])) == [
            {"start": f"{base}.128", "end": f"{base}.129"},
            {"start": f"{base}.131", "end": f"{base}.143"}]
        docker_env.run(f"{name}-a", name)
        address = docker_env.endpoint(f"{name}-a", name)["IPAddress"]
        assert address in {f"{base}.{i}" for i in (128, 129, *range(131, 144))}, address
        routes = docker_env.docker("exec", f"{name}-a", "ip", "route").stdout
        assert f"default via {base}.254" in routes, routes
    finally:
        docker_env.docker("rm", "-f", f"{name}-a", check=False)
        docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before

    small = f"10.{n}.12"
    refused = docker_env.create_network(
        name, "--subnet", f"{small}.0/29", "--ip-range", f"{small}.0/30", "--gateway",
        f"{small}.1", "--aux-address", f"a={small}.2", "--aux-address", f"b={small}.3",
        check=False)
    assert refused.returncode != 0
    assert f"--ip-range {small}.0/30 leaves no address" in refused.stderr, refused.stderr
    docker_env.docker("network", "rm", name, check=False)
    assert docker_resources(conn) == before
