"""Address groups, the part of ``client.Neutron`` that keeps sets of CIDRs a security group
rule can name as its remote (``remote_address_group_id``): NetworkPolicy's peers change by
adding and removing addresses, with no rule touched. Calls go through ``facade.Facade``; which
addresses a group holds is decided by the callers.

Measured on Neutron 29.0.0:
- No tags: an address group is not a taggable resource (``PUT .../tags`` answers 404,
  ``tags`` in the POST 400 "Unrecognized attribute(s)", ``?tags=`` 400 "invalid attribute for
  filtering"). Give every group a deterministic name and find it by ``name`` (and
  ``project_id``); ``description`` is free text.
- Addresses are CIDRs stored canonical (``resources.canonical_cidr``): host bits cleared,
  IPv6 compressed lower-case. Neutron refuses a bare address or a repeated one in the POST
  (400) but takes both in ``add_addresses``; here every address is made canonical and
  deduplicated before it is sent, so ``create_address_group(addresses=["10.0.0.5"])`` holds
  ``10.0.0.5/32`` and what a group holds can be diffed exactly with the caller's set.
- ``add_addresses`` and ``remove_addresses`` are strict and all-or-nothing: one address
  already there (400 ``AddressesAlreadyExist``) or not there (404 ``AddressesNotFound``) fails
  the whole call and changes nothing; mapped to ``failures.AddressesAlreadyInGroupError`` and
  ``failures.AddressesNotInGroupError``.
- A group that a rule still names cannot be deleted (409 ``AddressGroupInUse``,
  ``failures.InUseError``); deleting the rule (or its security group) first frees it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kuryr import errors
from kuryr.neutron import facade, resources


def canonical_addresses(addresses: Iterable[str]) -> list[str]:
    """``addresses`` canonical (``resources.canonical_cidr``), each once, in a stable order.
    Raises PermanentError for one that is not an address or CIDR."""
    return sorted({resources.canonical_cidr(a) for a in addresses})


class AddressGroups(facade.Facade):
    async def create_address_group(self, name: str, *, addresses: Iterable[str] = (),
                                   description: str = "",
                                   project_id: str | None = None) -> resources.AddressGroup:
        """A new group holding ``addresses`` (CIDRs or bare addresses). Neutron does not
        refuse a second group of the same name: look for it first (``list_address_groups(
        name=...)``). Raises PermanentError (a bad address), QuotaExceededError."""
        attrs: dict[str, Any] = {"name": name, "description": description,
                                 "addresses": canonical_addresses(addresses)}
        if project_id:
            attrs["project_id"] = project_id
        r = await self._call(f"create address group {name}", self._net.create_address_group,
                             **attrs)
        return resources.address_group(r)

    async def get_address_group(self, group_id: str) -> resources.AddressGroup:
        """Raises NotFoundError."""
        r = await self._call(f"get address group {group_id}", self._net.get_address_group,
                             group_id)
        return resources.address_group(r)

    async def list_address_groups(self, **query: Any) -> list[resources.AddressGroup]:
        """Groups matching the SDK query (``name``, ``project_id``, ``description``). Raises
        PermanentError for ``tags``: Neutron 29 has none on address groups."""
        if "tags" in query:
            raise errors.PermanentError("list address groups: Neutron has no tags on address "
                                        "groups; find them by name")
        return await self._list("list address groups", self._net.address_groups,
                                resources.address_group, tags=(), **query)

    async def add_addresses(self, group_id: str,
                            addresses: Iterable[str]) -> resources.AddressGroup:
        """Add ``addresses`` (made canonical) to the group; the group afterwards.

        Raises failures.AddressesAlreadyInGroupError when the group holds one of them already
        (then nothing was added), NotFoundError for a missing group, PermanentError for a bad
        address."""
        wanted = canonical_addresses(addresses)
        r = await self._call(f"add addresses to address group {group_id}",
                             self._net.add_addresses_to_address_group, group_id, wanted)
        return resources.address_group(r)

    async def remove_addresses(self, group_id: str,
                               addresses: Iterable[str]) -> resources.AddressGroup:
        """Remove ``addresses`` (made canonical) from the group; the group afterwards.

        Raises failures.AddressesNotInGroupError when the group lacks one of them (then nothing
        was removed), NotFoundError for a missing group, PermanentError for a bad address."""
        unwanted = canonical_addresses(addresses)
        r = await self._call(f"remove addresses from address group {group_id}",
                             self._net.remove_addresses_from_address_group, group_id,
                             unwanted)
        return resources.address_group(r)

    async def delete_address_group(self, group_id: str) -> None:
        """Idempotent: a group that does not exist is success. Raises failures.InUseError
        while a security group rule names the group."""
        await self._call(f"delete address group {group_id}", self._net.delete_address_group,
                         group_id, ignore_missing=True)
