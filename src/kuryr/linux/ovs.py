"""Open vSwitch ports through OVSDB (ovsdbapp): add a port to a bridge with the external_ids
OVN needs, remove it, and find the ports kuryr owns. Does not touch links or namespaces.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from kuryr import errors

OWNER_KEY = "owner"
OWNER = "kuryr"


class Ovsdb:
    """A connection to one ovsdb-server, opened on first use and shared by threads."""

    def __init__(self, connection_string: str, *, timeout: float = 10.0) -> None:
        self.connection_string = connection_string
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    def _get_api(self) -> Any:
        with self._lock:
            if self._api is None:
                try:
                    idl = connection.OvsdbIdl.from_server(self.connection_string,
                                                          "Open_vSwitch")
                    conn = connection.Connection(idl=idl, timeout=int(self.timeout))
                    self._api = impl_idl.OvsdbIdl(conn, start=True)
                except Exception as e:  # ovsdbapp raises bare Exception when unreachable
                    raise errors.BindingError(
                        f"cannot reach Open vSwitch at {self.connection_string}: {e}. "
                        "Is ovsdb-server running (kuryr cloud status)?") from e
            return self._api

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.ovsdb_connection.stop()
                self._api = None

    def _run(self, what: str, *commands: Any) -> list[Any]:
        api = self._get_api()
        try:
            with api.transaction(check_error=True) as txn:
                for command in commands:
                    txn.add(command)
            return [c.result for c in commands]
        except Exception as e:  # ovsdbapp's TimeoutException, RuntimeError, ...
            raise errors.BindingError(f"OVSDB {what} failed: {e}") from e

    def bridge_exists(self, bridge: str) -> bool:
        return bool(self._run(f"lookup of bridge {bridge}", self._get_api().br_exists(bridge))[0])

    def add_port(self, bridge: str, port: str, *, external_ids: Mapping[str, str]) -> None:
        """Add (or update) ``port`` on ``bridge`` with ``external_ids`` plus the owner marker.
        Raises BindingError, naming a missing bridge."""
        api = self._get_api()
        if not self.bridge_exists(bridge):
            raise errors.BindingError(f"OVS bridge {bridge} does not exist")
        ids = {**external_ids, OWNER_KEY: OWNER}
        self._run(f"add of port {port} to {bridge}",
                  api.add_port(bridge, port, may_exist=True),
                  api.db_set("Interface", port, ("external_ids", ids)))

    def delete_port(self, port: str) -> None:
        """Remove ``port`` from whatever bridge holds it; a missing port is success."""
        self._run(f"removal of port {port}", self._get_api().del_port(port, if_exists=True))

    def port_external_ids(self, port: str) -> dict[str, str] | None:
        """The Interface's external_ids, or None when there is no such interface."""
        api = self._get_api()
        rows = self._run(f"lookup of {port}", api.db_find(
            "Interface", ("name", "=", port), columns=["external_ids"]))[0]
        if not rows:
            return None
        return dict(rows[0]["external_ids"])

    def iface_ids(self) -> set[str]:
        """The ``external_ids:iface-id`` of every Interface, whoever made it: the Neutron
        ports plugged on this host."""
        api = self._get_api()
        rows = self._run("listing of interfaces", api.db_find(
            "Interface", columns=["external_ids"]))[0]
        return {r["external_ids"]["iface-id"] for r in rows if "iface-id" in r["external_ids"]}

    def owned_ports(self, bridge: str) -> dict[str, dict[str, str]]:
        """Interfaces on ``bridge`` that kuryr created: name -> external_ids."""
        api = self._get_api()
        names = set(self._run(f"listing of {bridge}", api.list_ifaces(bridge))[0])
        rows = self._run("listing of interfaces", api.db_find(
            "Interface", columns=["name", "external_ids"]))[0]
        return {r["name"]: dict(r["external_ids"]) for r in rows
                if r["name"] in names and r["external_ids"].get(OWNER_KEY) == OWNER}
