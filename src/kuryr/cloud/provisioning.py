"""One-time and every-start setup of the local cloud's data: the OVSDB files of Open vSwitch and
OVN, this chassis' identity and integration bridge, MariaDB's datadir, Neutron's and Octavia's
databases, users and schemas, and the quotas of the cloud's project.

Owns what goes into the databases. Each step is idempotent; the slow one-time steps
(``mariadb-install-db``, ``neutron-db-manage upgrade heads``, ``octavia-db-manage upgrade
head``) and the quotas leave a marker and are skipped
when it is there. Does not start daemons (``services``) nor write configuration
(``rendering``).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
import uuid
from collections.abc import Callable

from kuryr.cloud import commands, external, installing, layout, rendering

VSWITCH_SCHEMA = pathlib.Path("/usr/share/openvswitch/vswitch.ovsschema")
OVN_NB_SCHEMA = pathlib.Path("/usr/share/ovn/ovn-nb.ovsschema")
OVN_SB_SCHEMA = pathlib.Path("/usr/share/ovn/ovn-sb.ovsschema")
MARIADB_MARKER = "mariadb-installed"
MIGRATED_MARKER = "neutron-db-migrated"
OCTAVIA_DB_MARKER = "octavia-db-created"
OCTAVIA_MIGRATED_MARKER = "octavia-db-migrated"
QUOTAS_MARKER = "neutron-quotas"
# Under noauth every request acts in this project (there is no Keystone to make others).
PROJECT_ID = "fake_project_id"
# The least limits the project gets, by Neutron's names. NetworkPolicy makes a security group
# per policy and rules per peer: Neutron's defaults (10 groups, 100 rules) are soon met.
QUOTAS = {"security_group": 200, "security_group_rule": 2000}

Progress = Callable[[str], None]


def system_id(cloud: layout.CloudLayout) -> str:
    """This chassis' OVN system-id, generated once and kept in the state directory."""
    try:
        existing = cloud.system_id_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new = str(uuid.uuid4())
    cloud.system_id_file.write_text(new + "\n", encoding="utf-8")
    return new


def ensure_ovsdb_file(cloud: layout.CloudLayout, db: pathlib.Path, schema: pathlib.Path) -> None:
    """Create the OVSDB file ``db`` from ``schema``, or convert it after a package upgrade.

    Raises CloudError when ovsdb-tool fails.
    """
    log = cloud.log("ovsdb-tool")
    if not db.exists():
        commands.run(["ovsdb-tool", "create", str(db), str(schema)],
                     step=f"creating {db.name}", log=log)
        return
    answer = commands.run(["ovsdb-tool", "needs-conversion", str(db), str(schema)],
                          step=f"checking the schema of {db.name}", log=log)
    if answer.strip() == "yes":
        commands.run(["ovsdb-tool", "convert", str(db), str(schema)],
                     step=f"converting {db.name} to the installed schema", log=log)


def configure_switch(cloud: layout.CloudLayout) -> None:
    """Set this chassis' OVN identity and the integration bridge in Open vSwitch's database.

    Needs ovsdb-server running (not ovs-vswitchd). Raises CloudError when ovs-vsctl fails.
    """
    ids = {
        "system-id": system_id(cloud),
        "hostname": rendering.host_name(),
        "ovn-remote": f"unix:{cloud.ovn_sb_socket}",
        "ovn-encap-type": "geneve",
        "ovn-encap-ip": "127.0.0.1",
        "ovn-bridge": layout.INTEGRATION_BRIDGE,
        "ovn-bridge-datapath-type": "netdev",
    }
    bridge = layout.INTEGRATION_BRIDGE
    argv = ["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--no-wait", "--timeout=10",
            "init",
            "--", "--may-exist", "add-br", bridge,
            "--", "set", "Bridge", bridge, "datapath_type=netdev", "fail-mode=secure",
            "other-config:disable-in-band=true",
            "--", "set", "Open_vSwitch", "."]
    argv += [f'external_ids:{key}="{value}"' for key, value in ids.items()]
    commands.run(argv, step="configuring Open vSwitch", log=cloud.log("ovs-vsctl"),
                 env=cloud.tool_environment())


def disable_zero_snat(cloud: layout.CloudLayout, *, wait: float = 0.0) -> bool:
    """Tell ovn-controller that this datapath cannot do all-zero SNAT, so that OVN commits
    stateful ACL connections without ``nat(src)``.

    Open vSwitch 3.1.0's userspace conntrack aborts (``assertion conn->conn_type ==
    CT_CONN_TYPE_DEFAULT failed in conn_update_state()``) on reply packets of such
    connections now and then: about once a minute under the NetworkPolicy truth table's
    churn, never once without it. The capability is the datapath's own report
    (``Datapath:capabilities``), written when ovs-vswitchd starts; ovn-controller reads it
    and recomputes. ``wait`` seconds for the row ovn-controller makes. True when a value was
    changed. Raises CloudError when ovs-vsctl fails.
    """
    deadline = time.monotonic() + wait
    env = cloud.tool_environment()
    while True:
        listed = commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--timeout=10",
                               "--format=json", "--columns=_uuid,capabilities", "list",
                               "Datapath"], step="reading the datapath's capabilities",
                              log=cloud.log("ovs-vsctl"), env=env)
        rows = json.loads(listed).get("data") or []
        enabled = [row[0][1] for row in rows
                   if ["ct_zero_snat", "true"] in (row[1][1] if row[1][0] == "map" else [])]
        known = [row for row in rows if row[1][0] == "map" and row[1][1]]
        if known or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for uuid_ in enabled:
        commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--timeout=10", "set",
                      "Datapath", uuid_, "capabilities:ct_zero_snat=false"],
                     step="turning off zero SNAT for OVN", log=cloud.log("ovs-vsctl"), env=env)
    return bool(enabled)


def remove_bridge(cloud: layout.CloudLayout) -> None:
    """Delete the integration and external bridges through ovs-vswitchd, which then removes
    their tap devices (they outlive a stopped ovs-vswitchd). Raises CloudError when ovs-vsctl
    fails."""
    commands.run(["ovs-vsctl", f"--db={cloud.ovsdb_connection}", "--timeout=10",
                  "--if-exists", "del-br", layout.INTEGRATION_BRIDGE,
                  "--", "--if-exists", "del-br", layout.EXTERNAL_BRIDGE],
                 step="deleting the bridges", log=cloud.log("ovs-vsctl"),
                 env=cloud.tool_environment())


def init_ovn_databases(cloud: layout.CloudLayout) -> None:
    """Give the OVN databases their global rows (idempotent). Raises CloudError."""
    log = cloud.log("ovn-ctl")
    commands.run(["ovn-nbctl", f"--db=unix:{cloud.ovn_nb_socket}", "--timeout=10", "init"],
                 step="initialising the OVN northbound database", log=log)
    commands.run(["ovn-sbctl", f"--db=unix:{cloud.ovn_sb_socket}", "--timeout=10", "init"],
                 step="initialising the OVN southbound database", log=log)


def ensure_mariadb_datadir(cloud: layout.CloudLayout, *, progress: Progress) -> None:
    """Run mariadb-install-db once (a half-made datadir is wiped first). Raises CloudError."""
    marker = cloud.marker(MARIADB_MARKER)
    if marker.exists():
        return
    progress("creating MariaDB's datadir")
    shutil.rmtree(cloud.mysql_dir, ignore_errors=True)
    cloud.mysql_dir.mkdir(parents=True)
    commands.run(["mariadb-install-db", "--no-defaults", "--user=root",
                  f"--datadir={cloud.mysql_dir}", "--auth-root-authentication-method=socket",
                  "--skip-test-db"],
                 step="mariadb-install-db", log=cloud.log("mariadb-install-db"), timeout=300)
    marker.touch()


def ensure_neutron_database(cloud: layout.CloudLayout) -> None:
    """Create Neutron's database and user (and reset its password). Raises CloudError."""
    _ensure_database(cloud, rendering.NEUTRON_DB, rendering.NEUTRON_DB_USER,
                     rendering.db_password(cloud), step="creating Neutron's database")


def ensure_octavia_database(cloud: layout.CloudLayout) -> None:
    """Create Octavia's database and user (and reset its password). Raises CloudError."""
    _ensure_database(cloud, rendering.OCTAVIA_DB, rendering.OCTAVIA_DB_USER,
                     rendering.octavia_db_password(cloud), step="creating Octavia's database")
    cloud.marker(OCTAVIA_DB_MARKER).touch()


def octavia_database_exists(cloud: layout.CloudLayout) -> bool:
    return cloud.marker(OCTAVIA_DB_MARKER).exists()


def _ensure_database(cloud: layout.CloudLayout, db: str, user: str, password: str, *,
                     step: str) -> None:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    statements = [f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4"]
    for host in (layout.MARIADB_HOST, "localhost"):
        statements += [
            f"CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{quoted}'",
            f"ALTER USER '{user}'@'{host}' IDENTIFIED BY '{quoted}'",
            f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'{host}'",
        ]
    commands.run(["mariadb", "--no-defaults", f"--socket={cloud.mysql_socket}", "--user=root",
                  "--batch"],
                 step=step, log=cloud.log("mariadb-client"),
                 stdin=";\n".join(statements) + ";\n", timeout=60)


def ensure_neutron_schema(cloud: layout.CloudLayout, *, progress: Progress) -> None:
    """``neutron-db-manage upgrade heads`` once per Neutron version. Raises CloudError."""
    marker = cloud.marker(MIGRATED_MARKER)
    try:
        if marker.read_text(encoding="utf-8").strip() == installing.NEUTRON_VERSION:
            return
    except FileNotFoundError:
        pass
    progress("creating Neutron's database schema (neutron-db-manage upgrade heads)")
    commands.run([str(cloud.venv_bin / "neutron-db-manage"),
                  "--config-file", str(cloud.neutron_conf),
                  "--config-file", str(cloud.ml2_conf), "upgrade", "heads"],
                 step="neutron-db-manage upgrade heads", log=cloud.log("neutron-db-manage"),
                 timeout=600)
    marker.write_text(installing.NEUTRON_VERSION + "\n", encoding="utf-8")


def ensure_octavia_schema(cloud: layout.CloudLayout, *, progress: Progress) -> None:
    """``octavia-db-manage upgrade head`` once per Octavia version. Raises CloudError."""
    marker = cloud.marker(OCTAVIA_MIGRATED_MARKER)
    try:
        if marker.read_text(encoding="utf-8").strip() == installing.OCTAVIA_VERSION:
            return
    except FileNotFoundError:
        pass
    progress("creating Octavia's database schema (octavia-db-manage upgrade head)")
    commands.run([str(installing.octavia_executable(cloud, "octavia-db-manage")),
                  "--config-file", str(cloud.octavia_conf), "upgrade", "head"],
                 step="octavia-db-manage upgrade head", log=cloud.log("octavia-db-manage"),
                 timeout=600)
    marker.write_text(installing.OCTAVIA_VERSION + "\n", encoding="utf-8")


def ensure_quotas(cloud: layout.CloudLayout) -> dict[str, int]:
    """Raise the project's quotas to at least ``QUOTAS`` (a higher or unlimited one stays);
    the limits it raised (none: nothing sent). Done once: the marker records what was
    ensured, so a later ``up`` reads one file and sends nothing (a quota lowered by hand
    afterwards stays lowered). Needs a healthy Neutron. Raises CloudError when Neutron refuses.
    """
    marker = cloud.marker(QUOTAS_MARKER)
    ensured = json.dumps(QUOTAS, sort_keys=True)
    try:
        if marker.read_text(encoding="utf-8").strip() == ensured:
            return {}
    except FileNotFoundError:
        pass
    current = external.neutron_request("GET", f"quotas/{PROJECT_ID}")["quota"]
    low = {name: least for name, least in QUOTAS.items()
           if 0 <= int(current.get(name, 0)) < least}
    if low:
        external.neutron_request("PUT", f"quotas/{PROJECT_ID}", {"quota": low})
    marker.write_text(ensured + "\n", encoding="utf-8")
    return low
