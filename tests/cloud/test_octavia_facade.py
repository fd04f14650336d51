"""The Octavia facade against the real local Octavia (OVN provider): load balancers, listeners,
pools and one-call member updates, tagged as kuryr tags everything, busy load balancers mapped
to TemporaryError, cascade deletes that leave nothing, and real TCP through a VIP to member
namespaces plugged by kuryr's OVS binder."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from kuryr import binding, errors, settings
from kuryr.cloud import layout
from kuryr.neutron import client, connecting, resources, tagging
from kuryr.octavia import client as octavia_client
from kuryr.octavia import resources as octavia_resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG
from tests.cloud.test_neutron_facade import ResettingProxy
from tests.conftest import RUN_ID, unavailable

TIMEOUT = 60.0  # bound of every wait here; the OVN provider needs about 1 s


@pytest.fixture
async def octavia(cloud_config: settings.KuryrSettings, neutron: client.Neutron
                  ) -> AsyncIterator[octavia_client.Octavia]:
    endpoint = cloud_config.octavia.endpoint_override or layout.OCTAVIA_URL
    facade = octavia_client.Octavia(
        connecting.connect(cloud_config.neutron, load_balancer_endpoint=endpoint),
        base_tags=neutron.base_tags)
    try:
        await facade.list_providers()
    except errors.TemporaryError as e:
        facade.close()
        unavailable(f"no Octavia on the local cloud ({e}); 'kuryr cloud up' installs it")
    yield facade
    facade.close()


@pytest.fixture
async def subnet(neutron: client.Neutron, network: resources.Network,
                 octavia: octavia_client.Octavia) -> AsyncIterator[resources.Subnet]:
    """The test network's IPv4 subnet on a router of its own (the OVN provider answers ARP
    for a VIP only on a routed subnet). At teardown, before the network goes: every load
    balancer of the test (cascade), then the router."""
    v4 = next(s for s in await neutron.list_subnets(network_id=network.id)
              if s.ip_version == 4)
    router = await neutron.create_router(f"kt-{RUN_ID}-lb-router", tags=[TEST_TAG])
    try:
        await neutron.add_router_interface(router.id, v4.id)
        yield v4
    finally:
        try:
            await _delete_load_balancers(octavia)
        finally:
            await neutron.remove_router_interface(router.id, v4.id)
            await neutron.delete_router(router.id)


async def _delete_load_balancers(octavia: octavia_client.Octavia) -> None:
    """Delete every load balancer of the test run, retrying a bounded while through
    TemporaryErrors (one still PENDING_*, or an Octavia that is restarting)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            for lb in await octavia.list_load_balancers(tags=[TEST_TAG]):
                with contextlib.suppress(errors.NotFoundError):  # gone meanwhile
                    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
                    await octavia.delete_load_balancer(lb.id, cascade=True)
                    await octavia.wait_load_balancer_deleted(lb.id, timeout=TIMEOUT)
            return
        except errors.TemporaryError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


def _address(subnet: resources.Subnet, host: int) -> str:
    return subnet.cidr.rsplit(".", 1)[0] + f".{host}"


async def _load_balancer(octavia: octavia_client.Octavia, subnet: resources.Subnet,
                         project_id: str) -> octavia_resources.LoadBalancer:
    return await octavia.create_load_balancer(
        f"kt-{RUN_ID}-{uuid.uuid4().hex[:4]}", vip_subnet_id=subnet.id,
        vip_address=_address(subnet, 50), project_id=project_id, tags=[TEST_TAG],
        description="kt: a service")


async def test_the_ovn_provider_is_listed(octavia: octavia_client.Octavia) -> None:
    assert "ovn" in await octavia.list_providers()


async def test_load_balancer_listener_pool_members_and_cascade_delete(
        octavia: octavia_client.Octavia, neutron: client.Neutron, network: resources.Network,
        subnet: resources.Subnet) -> None:
    base = set(octavia.base_tags)
    started = time.monotonic()
    lb = await _load_balancer(octavia, subnet, network.project_id)
    assert (lb.provisioning_status, lb.vip_address, lb.vip_subnet_id, lb.provider) == (
        "PENDING_CREATE", _address(subnet, 50), subnet.id, "ovn")
    assert base | {TEST_TAG} <= set(lb.tags)  # in the create request itself: one call
    assert lb.project_id == network.project_id and lb.vip_port_id

    # Busy: Octavia refuses anything on a PENDING_* load balancer (409), a TemporaryError;
    # waits are bounded.
    with pytest.raises(errors.TemporaryError, match="immutable") as busy:
        await octavia.create_listener(lb.id, name="kt", protocol="TCP", protocol_port=80)
    assert 0 < busy.value.delay <= 1
    with pytest.raises(errors.TemporaryError, match=r"still PENDING_CREATE after 0\.01 s"):
        await octavia.wait_load_balancer(lb.id, timeout=0.01)
    with pytest.raises(errors.TemporaryError, match="PENDING_CREATE, not being deleted"):
        await octavia.wait_load_balancer_deleted(lb.id, timeout=TIMEOUT)
    lb = await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    assert lb.provisioning_status == "ACTIVE", lb
    print(f"load balancer ACTIVE after {time.monotonic() - started:.2f} s")
    assert [x.id for x in await octavia.list_load_balancers(tags=[*base, TEST_TAG])] == [lb.id]
    assert [x.id for x in await octavia.list_load_balancers(name=lb.name)] == [lb.id]
    assert await octavia.list_load_balancers(tags=[TEST_TAG, "kt-no-such-tag"]) == []
    assert (await octavia.get_load_balancer(lb.id)).vip_port_id == lb.vip_port_id
    assert (await neutron.get_port(lb.vip_port_id)).fixed_ips[0].ip_address == lb.vip_address

    listener = await octavia.create_listener(
        lb.id, name="kt:TCP:80", protocol="TCP", protocol_port=80, tags=["kt-listener"],
        timeout_client_data=5000)
    assert (listener.loadbalancer_id, listener.protocol_port, listener.timeout_client_data) == (
        lb.id, 80, 5000)
    assert base | {"kt-listener"} <= set(listener.tags)
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    with pytest.raises(errors.PermanentError, match="already using") as duplicate:
        await octavia.create_listener(lb.id, name="again", protocol="TCP", protocol_port=80)
    assert not isinstance(duplicate.value, errors.TemporaryError)
    with pytest.raises(errors.PermanentError, match=r"501.*HTTP"):
        await octavia.create_listener(lb.id, name="http", protocol="HTTP", protocol_port=81)

    pool = await octavia.create_pool(listener_id=listener.id, name="kt:TCP:80", protocol="TCP",
                                     lb_algorithm="SOURCE_IP_PORT", tags=["kt-pool"])
    assert (pool.listener_id, pool.loadbalancer_id, pool.session_persistence) == (
        listener.id, lb.id, None)
    assert base | {"kt-pool"} <= set(pool.tags)
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    [listed] = await octavia.list_listeners(loadbalancer_id=lb.id)
    assert (listed.id, listed.default_pool_id, listed.provisioning_status) == (
        listener.id, pool.id, "ACTIVE")
    [listed_pool] = await octavia.list_pools(loadbalancer_id=lb.id)
    assert (listed_pool.id, listed_pool.lb_algorithm) == (pool.id, "SOURCE_IP_PORT")

    # Members: one batch call for the whole set, tagged (the traffic test below takes one
    # away again).
    specs = [octavia_resources.MemberSpec(_address(subnet, h), 8080, subnet.id, f"kt-{h}",
                                          ("kt-member",)) for h in (11, 12)]
    started = time.monotonic()
    await octavia.set_members(pool.id, specs)
    put = time.monotonic() - started
    with pytest.raises(errors.TemporaryError, match="immutable"):
        await octavia.set_members(pool.id, specs[:1])  # PENDING_UPDATE meanwhile
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    print(f"batch of 2 members: PUT {put:.2f} s, ACTIVE after {time.monotonic() - started:.2f} s")
    members = await octavia.list_members(pool.id)
    assert sorted((m.address, m.protocol_port, m.subnet_id, m.name) for m in members) == [
        (s.address, 8080, subnet.id, s.name) for s in specs]
    assert all(base | {"kt-member"} <= set(m.tags) for m in members)

    # Updates: timeouts (None: Octavia's default back), session persistence on and off; the
    # provider takes them (the pool stays ACTIVE, not ERROR).
    updated = await octavia.update_listener(listener.id, timeout_client_data=None,
                                            timeout_member_data=7000)
    assert (updated.timeout_client_data, updated.timeout_member_data) == (50000, 7000)
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    sticky = await octavia.update_pool(pool.id, session_persistence={"type": "SOURCE_IP"})
    assert (sticky.session_persistence or {}).get("type") == "SOURCE_IP"
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    assert [p.provisioning_status for p in await octavia.list_pools(loadbalancer_id=lb.id)] == [
        "ACTIVE"]
    with pytest.raises(errors.PermanentError, match="only for UDP"):  # TCP: no timeout
        await octavia.update_pool(pool.id, session_persistence={
            "type": "SOURCE_IP", "persistence_timeout": 60})
    loose = await octavia.update_pool(pool.id, session_persistence=None)
    assert loose.session_persistence is None
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    assert [p.provisioning_status for p in await octavia.list_pools(loadbalancer_id=lb.id)] == [
        "ACTIVE"]
    with pytest.raises(errors.PermanentError, match=r"(?i)subnet"):
        await octavia.create_load_balancer("kt-bad", vip_subnet_id=str(uuid.uuid4()),
                                           project_id=network.project_id)

    # Deletes: idempotent; a cascade takes everything with it, the VIP port too.
    await octavia.delete_listener(str(uuid.uuid4()))
    await octavia.delete_pool(str(uuid.uuid4()))
    with pytest.raises(errors.NotFoundError):
        await octavia.list_members(str(uuid.uuid4()))
    started = time.monotonic()
    await octavia.delete_load_balancer(lb.id, cascade=True)
    await octavia.delete_load_balancer(lb.id, cascade=True)  # PENDING_DELETE: still success
    await octavia.wait_load_balancer_deleted(lb.id, timeout=TIMEOUT)
    print(f"cascade delete: gone after {time.monotonic() - started:.2f} s")
    await octavia.delete_load_balancer(lb.id)  # gone: success
    with pytest.raises(errors.NotFoundError, match=lb.id):
        await octavia.get_load_balancer(lb.id)
    with pytest.raises(errors.NotFoundError):
        await octavia.wait_load_balancer(lb.id, timeout=1)
    assert await octavia.list_load_balancers(tags=[TEST_TAG]) == []
    assert await octavia.list_listeners(loadbalancer_id=lb.id) == []
    assert await octavia.list_pools(loadbalancer_id=lb.id) == []
    with pytest.raises(errors.NotFoundError):
        await neutron.get_port(lb.vip_port_id)


async def test_octavia_down_is_temporary_with_a_hint(cloud_config: settings.KuryrSettings
                                                     ) -> None:
    facade = octavia_client.Octavia(
        connecting.connect(cloud_config.neutron, load_balancer_endpoint="http://127.0.0.1:9/"),
        base_tags=("kuryr",))
    try:
        with pytest.raises(errors.TemporaryError, match="cannot reach Octavia"):
            await facade.list_load_balancers()
    finally:
        facade.close()


# -- traffic ------------------------------------------------------------------------------------
_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(sys.argv[2].encode())
    c.close()
"""

_CLIENT = """
import socket, sys
for _ in range(int(sys.argv[3])):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
            print(c.recv(64).decode() or "empty", flush=True)
    except OSError:
        print("failed", flush=True)
"""


@contextlib.contextmanager
def _serving(netns: str, port: int, name: str) -> Iterator[None]:
    """A TCP server in ``netns`` answering every connection with ``name``."""
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", _SERVER,
                               str(port), name], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield
    finally:
        server.kill()
        server.wait()


def _who_answers(netns: str, address: str, port: int, count: int = 16) -> collections.Counter[str]:
    """Who answers ``count`` connections from ``netns`` (each from its own source port)."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _CLIENT, address,
                          str(port), str(count)], capture_output=True, text=True, timeout=60)
    return collections.Counter(out.stdout.split())


async def _answers_become(netns: str, address: str, port: int, expected: set[str], *,
                          within: float = 15) -> collections.Counter[str]:
    """Who answers, once that is exactly ``expected`` (flows take a moment to settle)."""
    deadline = time.monotonic() + within
    while True:
        seen = await asyncio.to_thread(_who_answers, netns, address, port)
        if set(seen) == expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.3)


async def test_traffic_through_the_vip_reaches_the_members_set(
        octavia: octavia_client.Octavia, neutron: client.Neutron, network: resources.Network,
        subnet: resources.Subnet, binders: dict[str, binding.Binder],
        cloud_config: settings.KuryrSettings, make_netns: Callable[[], str]) -> None:
    host = cloud_config.binding.host
    lb = await _load_balancer(octavia, subnet, network.project_id)
    # Plug two members and a client meanwhile (the load balancer needs about a second).
    namespaces = {name: make_netns() for name in ("a", "b", "client")}
    plugged = dict(zip(namespaces, await asyncio.gather(*(
        lifecycle.attach(neutron, binders, network_id=network.id, netns=ns, ifname="eth0",
                         host=host, tags=[TEST_TAG, tagging.owner("test-member", name)])
        for name, ns in namespaces.items())), strict=True))
    address = {name: next(str(f.address.ip) for f in att.vif.fixed_ips
                          if f.address.version == 4) for name, att in plugged.items()}
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    listener = await octavia.create_listener(lb.id, name="kt:TCP:80", protocol="TCP",
                                             protocol_port=80)
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
    pool = await octavia.create_pool(listener_id=listener.id, name="kt:TCP:80", protocol="TCP",
                                     lb_algorithm="SOURCE_IP_PORT")
    await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)

    with _serving(namespaces["a"], 8080, "a"), _serving(namespaces["b"], 8080, "b"):
        await octavia.set_members(pool.id, [
            octavia_resources.MemberSpec(address[n], 8080, subnet.id, n) for n in ("a", "b")])
        await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
        seen = await _answers_become(namespaces["client"], lb.vip_address, 80, {"a", "b"})
        assert set(seen) == {"a", "b"}, f"both members should answer through the VIP: {seen}"

        await octavia.set_members(pool.id, [
            octavia_resources.MemberSpec(address["b"], 8080, subnet.id, "b")])
        await octavia.wait_load_balancer(lb.id, timeout=TIMEOUT)
        assert [m.name for m in await octavia.list_members(pool.id)] == ["b"]
        seen = await _answers_become(namespaces["client"], lb.vip_address, 80, {"b"})
        assert set(seen) == {"b"}, f"only the member left should answer: {seen}"

    for name, att in plugged.items():
        await lifecycle.detach(neutron, binders, port_id=att.port.id, netns=namespaces[name],
                               ifname="eth0")


async def test_a_reset_connection_repeats_reads_and_deletes_never_creates(
        octavia: octavia_client.Octavia, cloud_config: settings.KuryrSettings) -> None:
    proxy = ResettingProxy(f"{layout.OCTAVIA_API_HOST}:{layout.OCTAVIA_API_PORT}")
    with proxy.running() as url:
        facade = octavia_client.Octavia(
            connecting.connect(cloud_config.neutron, load_balancer_endpoint=url),
            base_tags=octavia.base_tags)
        try:
            await facade.list_load_balancers(tags=[TEST_TAG])
            proxy.arm()
            await facade.list_load_balancers(tags=[TEST_TAG])
            proxy.arm()
            with pytest.raises(errors.NotFoundError):
                await facade.get_load_balancer(str(uuid.uuid4()))
            proxy.arm()
            await facade.delete_listener(str(uuid.uuid4()))
            assert [r.split(b" ")[0] for r in proxy.reset] == [b"GET", b"GET", b"DELETE"]
            # A create is never sent twice: a TemporaryError, and nothing was made.
            name = f"kt-{RUN_ID}-reset"
            proxy.arm()
            with pytest.raises(errors.TemporaryError, match="cannot reach Octavia"):
                await facade.create_load_balancer(name, vip_subnet_id=str(uuid.uuid4()))
            assert proxy.reset[-1].startswith(b"POST ")
            assert await octavia.list_load_balancers(name=name) == []
        finally:
            facade.close()
