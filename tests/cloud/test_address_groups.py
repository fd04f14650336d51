"""Address groups, rules naming them, bulk rules and quotas against the real local Neutron:
strict adds and removes with typed errors, the canonical forms Neutron stores, rules made many
at a time in one request, a group in use, the project's raised quotas, and packets that pass
or not as the group's addresses change, with no rule touched."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import openstack.connection
import pytest

from kuryr import binding, errors, settings
from kuryr.cloud import provisioning
from kuryr.neutron import client, connecting, failures, resources
from kuryr.ports import lifecycle
from tests.cloud.conftest import TEST_TAG, remove_network
from tests.conftest import RUN_ID
from tests.support import peers

# (operation, result) of every call the module's facade made, for the tests that count them.
CALLS: list[tuple[str, str]] = []


def _name(what: str) -> str:
    return f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}-{what}"


@pytest.fixture(scope="module")
async def neutron(cloud_config: settings.KuryrSettings) -> AsyncIterator[client.Neutron]:
    facade = client.Neutron.from_settings(
        cloud_config, observer=lambda operation, result, _: CALLS.append((operation, result)))
    yield facade
    facade.close()


@pytest.fixture
def sdk(cloud_config: settings.KuryrSettings) -> Iterator[openstack.connection.Connection]:
    """The SDK itself, to see what Neutron stored without kuryr's translation."""
    conn: openstack.connection.Connection = connecting.connect(cloud_config.neutron)
    yield conn
    conn.close()


@pytest.fixture
async def undo() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Deletes of what a test made, run in reverse order (ports, then the rules' groups, then
    address groups) at teardown, whether the test passed or not."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


async def _address_group(neutron: client.Neutron, undo: contextlib.AsyncExitStack,
                         addresses: tuple[str, ...] = ()) -> resources.AddressGroup:
    group = await neutron.create_address_group(_name("ag"), addresses=addresses,
                                               description="kt: address group")
    undo.push_async_callback(neutron.delete_address_group, group.id)
    return group


async def _security_group(neutron: client.Neutron,
                          undo: contextlib.AsyncExitStack) -> resources.SecurityGroup:
    group = await neutron.create_security_group(_name("sg"), tags=[TEST_TAG])
    undo.push_async_callback(neutron.delete_security_group, group.id)
    return group


async def test_create_list_get_and_idempotent_delete(
        neutron: client.Neutron, undo: contextlib.AsyncExitStack) -> None:
    group = await _address_group(neutron, undo, ("10.0.0.5", "10.1.0.0/16", "fd00::1/64"))
    assert group.addresses == {"10.0.0.5/32", "10.1.0.0/16", "fd00::/64"}
    assert (group.description, group.project_id) == ("kt: address group",
                                                     provisioning.PROJECT_ID)
    assert await neutron.list_address_groups(name=group.name) == [group]
    by_project = await neutron.list_address_groups(project_id=group.project_id)
    assert group.id in {g.id for g in by_project}
    assert await neutron.get_address_group(group.id) == group
    await neutron.delete_address_group(group.id)
    await neutron.delete_address_group(group.id)  # again: still fine
    with pytest.raises(errors.NotFoundError, match=group.id):
        await neutron.get_address_group(group.id)
    assert await neutron.list_address_groups(name=group.name) == []


async def test_address_groups_take_no_tags(neutron: client.Neutron) -> None:
    with pytest.raises(errors.PermanentError, match="tags"):
        await neutron.list_address_groups(tags=[TEST_TAG])


async def test_add_and_remove_are_strict_and_all_or_nothing(
        neutron: client.Neutron, undo: contextlib.AsyncExitStack) -> None:
    group = await _address_group(neutron, undo, ("10.0.0.5/32",))
    added = await neutron.add_addresses(group.id, ["10.0.0.6", "fd00::6"])
    assert added.addresses == {"10.0.0.5/32", "10.0.0.6/32", "fd00::6/128"}

    # One address already there (given in another form) fails the call; nothing is added.
    with pytest.raises(failures.AddressesAlreadyInGroupError, match=r"10\.0\.0\.5/32"):
        await neutron.add_addresses(group.id, ["10.0.0.7/32", "10.0.0.5"])
    # One address not there fails the call; nothing is removed. The group does exist.
    with pytest.raises(failures.AddressesNotInGroupError, match=r"10\.9\.9\.9/32") as absent:
        await neutron.remove_addresses(group.id, ["10.0.0.6/32", "10.9.9.9"])
    assert not isinstance(absent.value, errors.NotFoundError)
    assert (await neutron.get_address_group(group.id)).addresses == added.addresses

    removed = await neutron.remove_addresses(group.id, ["10.0.0.6", "FD00::6/128"])
    assert removed.addresses == {"10.0.0.5/32"}
    assert await neutron.add_addresses(group.id, []) == removed  # nothing to add: no change

    missing = str(uuid.uuid4())
    for change in (neutron.add_addresses, neutron.remove_addresses):
        with pytest.raises(errors.NotFoundError, match=missing) as gone:
            await change(missing, ["10.0.0.5/32"])
        assert not isinstance(gone.value, errors.ConflictError)
    with pytest.raises(errors.PermanentError, match="'nope' is not an IP address"):
        await neutron.add_addresses(group.id, ["nope"])


# Given forms and Neutron's: host bits cleared, a bare address a /32 or /128, IPv6 compressed
# lower-case as inet_ntop writes it (dotted tails kept where Python's ipaddress has none).
FORMS = ["10.2.3.4/24", "10.0.0.9", "FD00:0:0::2/128", "fd01::5/64", "2001:DB8::0:1:0:0:0/96",
         "::ffff:10.0.0.1/128", "::10.0.0.1/128", "64:ff9b::10.0.0.1/128"]


async def test_canonical_forms_are_what_neutron_stores(
        neutron: client.Neutron, undo: contextlib.AsyncExitStack,
        sdk: openstack.connection.Connection) -> None:
    made = await _address_group(neutron, undo, tuple(FORMS[:4]))
    added = await neutron.add_addresses(made.id, FORMS[4:])
    stored = set(sdk.network.get_address_group(made.id).addresses)  # Neutron's own strings
    assert stored == {resources.canonical_cidr(a) for a in FORMS} == added.addresses
    assert "::ffff:10.0.0.1/128" in stored and "10.2.3.0/24" in stored


async def test_many_rules_in_one_request_naming_address_groups(
        neutron: client.Neutron, undo: contextlib.AsyncExitStack) -> None:
    peer = await _address_group(neutron, undo, ("10.0.0.0/24",))
    group = await _security_group(neutron, undo)
    specs = [
        resources.RuleSpec(protocol="icmp", remote_address_group_id=peer.id,
                           description="kt: ping from peer"),
        resources.RuleSpec(protocol="tcp", port_range_min=80, port_range_max=80,
                           remote_address_group_id=peer.id),
        resources.RuleSpec(direction="egress", ethertype="IPv6", protocol="udp",
                           port_range_min=53, port_range_max=53, remote_address_group_id=peer.id),
        resources.RuleSpec(protocol="udp", port_range_min=53, port_range_max=53,
                           remote_ip_prefix="10.9.9.9/8"),
        resources.RuleSpec(ethertype="IPv6", remote_group_id=group.id),
    ]
    CALLS.clear()
    made = await neutron.create_security_group_rules(group.id, specs)
    assert CALLS == [("create rules", "ok")]  # one call, one POST of a list
    assert [r.remote_address_group_id for r in made] == [peer.id] * 3 + [None, None]
    assert [r.description for r in made] == ["kt: ping from peer"] + [""] * 4
    assert made[3].remote_ip_prefix == "10.0.0.0/8"  # sent canonical
    assert made[4].remote_group_id == group.id

    listed = {r.id: r for r in
              await neutron.list_security_group_rules(security_group_id=group.id)}
    assert {r.id for r in made} <= set(listed)
    assert {listed[r.id] for r in made} == set(made)
    assert [listed[r.id].remote_address_group_id for r in made] == [peer.id] * 3 + [None, None]
    assert all(listed[r.id].security_group_id == group.id for r in made)

    # All or none: with one rule that exists, nothing of the request is made.
    new = resources.RuleSpec(protocol="tcp", port_range_min=81, port_range_max=81)
    with pytest.raises(failures.RuleExistsError):
        await neutron.create_security_group_rules(group.id, [new, specs[1]])
    after = await neutron.list_security_group_rules(security_group_id=group.id)
    assert {r.id for r in after} == set(listed)
    # The same rule twice (descriptions do not count) is refused before any request.
    CALLS.clear()
    with pytest.raises(errors.PermanentError, match="the same rule twice"):
        await neutron.create_security_group_rules(
            group.id, [new, dataclasses.replace(new, description="other")])
    assert await neutron.create_security_group_rules(group.id, []) == []
    assert CALLS == []


async def test_rules_belong_to_the_project_named_not_the_groups(
        neutron: client.Neutron) -> None:
    project = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}-rules"
    group = await neutron.create_security_group(_name("sg"), tags=[TEST_TAG],
                                                project_id=project)
    try:
        spec = resources.RuleSpec(protocol="tcp", port_range_min=22, port_range_max=22)
        [named] = await neutron.create_security_group_rules(group.id, [spec],
                                                            project_id=project)
        [unnamed] = await neutron.create_security_group_rules(
            group.id, [dataclasses.replace(spec, port_range_min=23, port_range_max=23)])
        assert (named.project_id, unnamed.project_id) == (project, provisioning.PROJECT_ID)
    finally:
        # Neutron gave the project a default group too; listing by project would make another.
        for made in await neutron.list_security_groups():
            if made.project_id == project:
                await neutron.delete_security_group(made.id)


async def test_a_group_named_by_a_rule_cannot_be_deleted(
        neutron: client.Neutron, undo: contextlib.AsyncExitStack) -> None:
    peer = await _address_group(neutron, undo)
    group = await _security_group(neutron, undo)
    rule = await neutron.create_security_group_rule(group.id, protocol="icmp",
                                                    remote_address_group_id=peer.id)
    assert rule.remote_address_group_id == peer.id
    with pytest.raises(failures.InUseError, match="AddressGroupInUse"):
        await neutron.delete_address_group(peer.id)
    assert (await neutron.get_address_group(peer.id)).id == peer.id
    await neutron.delete_security_group_rule(rule.id)
    await neutron.delete_address_group(peer.id)
    with pytest.raises(errors.NotFoundError):
        await neutron.get_address_group(peer.id)


async def test_quotas_read_and_raised(neutron: client.Neutron,
                                      sdk: openstack.connection.Connection) -> None:
    # The local cloud raised its project's limits when it was provisioned.
    ours = await neutron.get_quota(provisioning.PROJECT_ID)
    assert ours.security_groups is not None and ours.security_group_rules is not None
    assert ours.security_groups == -1 or ours.security_groups >= 200
    assert ours.security_group_rules == -1 or ours.security_group_rules >= 2000

    project = f"kt-{RUN_ID}-{uuid.uuid4().hex[:6]}-quota"  # no resources: no default group
    try:
        fresh = await neutron.get_quota(project)
        assert (fresh.security_groups, fresh.security_group_rules) == (10, 100)  # defaults
        raised = await neutron.update_quota(project, security_groups=50,
                                            security_group_rules=600)
        assert (raised.security_groups, raised.security_group_rules) == (50, 600)
        assert raised.ports == fresh.ports  # the others stay
        assert await neutron.get_quota(project) == raised
        with pytest.raises(errors.PermanentError, match="no such limit security_group "):
            await neutron.update_quota(project, security_group=5)
    finally:
        sdk.network.delete_quota(project)


@pytest.fixture(scope="module")
async def shared_network(neutron: client.Neutron, cloud_config: settings.KuryrSettings
                         ) -> AsyncIterator[resources.Network]:
    """One network with 10.<n>.0.0/24 for the module's packets; removed with its ports."""
    n = uuid.uuid4().int % 200 + 20
    net = await neutron.create_network(f"kt-{RUN_ID}-ag-{n}", tags=[TEST_TAG])
    try:
        await neutron.create_subnet(net.id, cidr=f"10.{n}.0.0/24", ip_version=4, tags=[TEST_TAG])
        yield await neutron.get_network(net.id)
    finally:
        await remove_network(neutron, cloud_config, net.id)


async def test_packets_follow_the_address_group_with_no_rule_touched(
        neutron: client.Neutron, shared_network: resources.Network,
        binders: dict[str, binding.Binder], cloud_config: settings.KuryrSettings,
        make_netns: Callable[[], str], undo: contextlib.AsyncExitStack) -> None:
    peer = await _address_group(neutron, undo)
    server_group = await _security_group(neutron, undo)  # egress anywhere, as Neutron makes it
    client_group = await _security_group(neutron, undo)
    rule = await neutron.create_security_group_rule(server_group.id, protocol="icmp",
                                                    remote_address_group_id=peer.id)
    host = cloud_config.binding.host
    attached = []
    for group in (server_group, client_group):
        att = await lifecycle.attach(neutron, binders, network_id=shared_network.id,
                                     netns=make_netns(), ifname="eth0", host=host,
                                     tags=[TEST_TAG], security_group_ids=[group.id])
        undo.push_async_callback(lifecycle.detach, neutron, binders, port_id=att.port.id,
                                 netns=att.netns, ifname="eth0")
        attached.append(att)
    server, client_ = attached
    server_ip = next(str(f.address.ip) for f in server.vif.fixed_ips)
    client_ip = next(str(f.address.ip) for f in client_.vif.fixed_ips)

    assert peers.ping_eventually(client_.netns, server_ip, expect=False), "empty group: passes"
    await neutron.add_addresses(peer.id, [client_ip])
    assert peers.ping_eventually(client_.netns, server_ip, expect=True), "client's /32: dropped"
    await neutron.remove_addresses(peer.id, [client_ip])
    assert peers.ping_eventually(client_.netns, server_ip, expect=False), "removed: passes"
    rules = await neutron.list_security_group_rules(security_group_id=server_group.id)
    assert [r for r in rules if r.direction == "ingress"] == [rule]
