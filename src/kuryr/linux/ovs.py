"""Open vSwitch ports through OVSDB (ovsdbapp): add a port to a bridge with the external_ids
OVN needs, remove it, find the ports kuryr owns, and learn when the node's ovn-controller has
installed a port's flows (``external_ids:ovn-installed="true"`` on its Interface), from the
IDL's own change notifications. Does not touch links or namespaces.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from kuryr import errors

OWNER_KEY = "owner"
OWNER = "kuryr"
# Set by ovn-controller on an Interface once the flows of its logical port are installed.
INSTALLED_KEY = "ovn-installed"
# Set on the Open_vSwitch row when this node runs (or is configured for) ovn-controller.
OVN_REMOTE_KEY = "ovn-remote"


class _WatchedIdl(connection.OvsdbIdl):  # type: ignore[misc]
    """The IDL, telling waiters when an Interface gets ``ovn-installed="true"``. ``notify`` runs
    on the connection's thread for every row change the server sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._waiters: dict[str, set[concurrent.futures.Future[None]]] = {}
        self._waiters_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def add_waiter(self, name: str, future: concurrent.futures.Future[None]) -> None:
        with self._waiters_lock:
            self._waiters.setdefault(name, set()).add(future)

    def discard_waiter(self, name: str, future: concurrent.futures.Future[None]) -> None:
        with self._waiters_lock:
            waiting = self._waiters.get(name)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[name]

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        if event == "delete" or not self._waiters or row._table.name != "Interface":
            return
        try:
            name, ids = row.name, row.external_ids
        except AttributeError:  # a partial row
            return
        if ids.get(INSTALLED_KEY) != "true":
            return
        with self._waiters_lock:
            waiting = list(self._waiters.get(name, ()))
        for future in waiting:
            _resolve(future)


def _resolve(future: concurrent.futures.Future[None]) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # resolved or cancelled
        future.set_result(None)


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
                    idl = _WatchedIdl.from_server(self.connection_string, "Open_vSwitch")
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

    def runs_ovn(self) -> bool:
        """Whether this node is configured for ovn-controller (``external_ids:ovn-remote`` on
        the Open_vSwitch row). Raises BindingError."""
        api = self._get_api()
        ids = self._run("lookup of the Open_vSwitch row",
                        api.db_get("Open_vSwitch", ".", "external_ids"))[0]
        return bool((ids or {}).get(OVN_REMOTE_KEY))

    def installed(self, port: str) -> concurrent.futures.Future[None]:
        """A future resolved once the Interface ``port`` carries ``ovn-installed="true"``
        (at once if it does already). Cancel it when no longer waiting. Raises BindingError."""
        api = self._get_api()
        idl: _WatchedIdl = api.idl
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        idl.add_waiter(port, future)
        future.add_done_callback(lambda f: idl.discard_waiter(port, f))
        try:
            # Read after registering: a change landing in between resolves the future anyway.
            ids = self.port_external_ids(port)
        except BaseException:
            future.cancel()
            raise
        if ids is not None and ids.get(INSTALLED_KEY) == "true":
            _resolve(future)
        return future

    def set_external_ids(self, port: str, external_ids: Mapping[str, str]) -> None:
        """Add (or replace) these keys of the Interface ``port``'s external_ids, leaving its
        other keys as they are. Raises BindingError (also when there is no such Interface)."""
        api = self._get_api()
        self._run(f"update of {port}'s external_ids",
                  api.db_set("Interface", port, ("external_ids", dict(external_ids))))
