"""Where everything of one local cloud lives: every path under its state directory.

Owns the names of directories, database files, sockets, pidfiles, logs, markers and generated
configuration files. Pure: nothing here touches the file system; ``lifecycle`` creates the
directories. Unix socket paths are limited to 107 bytes, so when the state directory is too
deep the run directory (sockets and pidfiles) moves to a short one under ``/run/kuryr``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib

# The longest name put in a run directory: "ovs-vswitchd.4194304.ctl" plus some margin.
_LONGEST_RUN_NAME = 40
_SOCKET_PATH_MAX = 107
_SHORT_RUN_ROOT = pathlib.Path("/run/kuryr")

NEUTRON_API_HOST = "127.0.0.1"
NEUTRON_API_PORT = 9696
NEUTRON_URL = f"http://{NEUTRON_API_HOST}:{NEUTRON_API_PORT}/"
OCTAVIA_API_HOST = "127.0.0.1"
OCTAVIA_API_PORT = 9876
OCTAVIA_URL = f"http://{OCTAVIA_API_HOST}:{OCTAVIA_API_PORT}/"
# ovn-octavia-provider 11 ignores the configured driver-agent socket paths and always uses
# Octavia's defaults in this directory (one Octavia per machine, like one Open vSwitch).
OCTAVIA_AGENT_RUN_DIR = pathlib.Path("/var/run/octavia")
OCTAVIA_AGENT_SOCKETS = tuple(OCTAVIA_AGENT_RUN_DIR / f"{name}.sock"
                              for name in ("status", "stats", "get"))
MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 13306
INTEGRATION_BRIDGE = "br-int"
# The provider network of floating IPs: an OVS bridge, its physical network name in Neutron,
# and the "outside" network namespace plugged on it, holding the external gateway address.
EXTERNAL_BRIDGE = "br-ex"
PHYSICAL_NETWORK = "public"
OUTSIDE_NETNS = "kuryr-outside"
# The veth of the outside namespace: its end on br-ex and its end in the namespace.
OUTSIDE_HOST_IFNAME = "kuryr-outside"
OUTSIDE_IFNAME = "eth0"


@dataclasses.dataclass(frozen=True)
class CloudLayout:
    """Every path of the local cloud whose state lives in ``state_dir``."""

    state_dir: pathlib.Path

    def __post_init__(self) -> None:
        # Absolute, so that paths written into configs and sockets mean the same everywhere.
        object.__setattr__(self, "state_dir", pathlib.Path(self.state_dir).absolute())

    # --- top level -----------------------------------------------------------------------
    @property
    def venv(self) -> pathlib.Path:
        """Neutron's own virtualenv (kept by ``down --purge``)."""
        return self.state_dir / "venv"

    @property
    def venv_bin(self) -> pathlib.Path:
        return self.venv / "bin"

    @property
    def venv_python(self) -> pathlib.Path:
        return self.venv_bin / "python"

    @property
    def venv_marker(self) -> pathlib.Path:
        """Written after a successful install: the hash of what was installed."""
        return self.venv / ".kuryr-installed"

    @property
    def octavia_venv(self) -> pathlib.Path:
        """Octavia's own virtualenv, apart from Neutron's (kept by ``down --purge``)."""
        return self.state_dir / "octavia-venv"

    @property
    def octavia_venv_bin(self) -> pathlib.Path:
        return self.octavia_venv / "bin"

    @property
    def octavia_venv_python(self) -> pathlib.Path:
        return self.octavia_venv_bin / "python"

    @property
    def octavia_venv_marker(self) -> pathlib.Path:
        return self.octavia_venv / ".kuryr-installed"

    @property
    def clouds_yaml(self) -> pathlib.Path:
        return self.state_dir / "clouds.yaml"

    @property
    def kuryr_conf(self) -> pathlib.Path:
        return self.state_dir / "kuryr.conf"

    @property
    def db_password_file(self) -> pathlib.Path:
        """The MariaDB password of the ``neutron`` user, mode 0600."""
        return self.state_dir / "mariadb-neutron-password"

    @property
    def octavia_db_password_file(self) -> pathlib.Path:
        """The MariaDB password of the ``octavia`` user, mode 0600."""
        return self.state_dir / "mariadb-octavia-password"

    @property
    def lock_file(self) -> pathlib.Path:
        """Held (flock) by 'up' and 'down' so that two of them never interleave."""
        return self.state_dir / ".lock"

    @property
    def data_dir(self) -> pathlib.Path:
        """Everything ``down --purge`` deletes (with the generated files above)."""
        return self.state_dir / "data"

    # --- data subdirectories -------------------------------------------------------------
    @property
    def ovs_dir(self) -> pathlib.Path:
        return self.data_dir / "ovs"

    @property
    def ovn_dir(self) -> pathlib.Path:
        return self.data_dir / "ovn"

    @property
    def mysql_dir(self) -> pathlib.Path:
        """MariaDB's datadir."""
        return self.data_dir / "mysql"

    @property
    def neutron_dir(self) -> pathlib.Path:
        """Neutron's configuration files, WSGI wrapper, lock and state paths."""
        return self.data_dir / "neutron"

    @property
    def octavia_dir(self) -> pathlib.Path:
        """Octavia's configuration file and WSGI and driver-agent wrappers."""
        return self.data_dir / "octavia"

    @property
    def external_network_file(self) -> pathlib.Path:
        """The id of the Neutron network ``kuryr-public``, written once it exists."""
        return self.data_dir / "external-network-id"

    @property
    def log_dir(self) -> pathlib.Path:
        return self.data_dir / "log"

    @property
    def run_dir(self) -> pathlib.Path:
        """Sockets and pidfiles: ``data/run`` unless that is too long for a socket path."""
        local = self.data_dir / "run"
        if len(str(local / "ovs")) + 1 + _LONGEST_RUN_NAME <= _SOCKET_PATH_MAX:
            return local
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return _SHORT_RUN_ROOT / digest

    @property
    def markers_dir(self) -> pathlib.Path:
        """One empty file per one-time step done (databases created, migrated)."""
        return self.data_dir / "markers"

    def marker(self, name: str) -> pathlib.Path:
        return self.markers_dir / name

    def directories(self) -> tuple[pathlib.Path, ...]:
        """Every directory ``up`` creates."""
        return (self.state_dir, self.data_dir, self.ovs_dir, self.ovn_dir, self.mysql_dir,
                self.neutron_dir, self.log_dir, self.run_dir, self.ovs_run_dir,
                self.ovn_run_dir, self.mysql_run_dir, self.markers_dir,
                self.neutron_state_dir, self.neutron_lock_dir, self.neutron_tmp_dir,
                self.octavia_dir)

    def tool_environment(self) -> dict[str, str]:
        """Variables that make the ovs-* and ovn-* tools (and daemons) use this cloud."""
        return {
            "OVS_RUNDIR": str(self.ovs_run_dir),
            "OVS_DBDIR": str(self.ovs_dir),
            "OVS_LOGDIR": str(self.log_dir),
            "OVN_RUNDIR": str(self.ovn_run_dir),
            "OVN_DBDIR": str(self.ovn_dir),
            "OVN_LOGDIR": str(self.log_dir),
            "OVN_NB_DB": f"unix:{self.ovn_nb_socket}",
            "OVN_SB_DB": f"unix:{self.ovn_sb_socket}",
        }

    def log(self, name: str) -> pathlib.Path:
        """The log file of a service or step."""
        return self.log_dir / f"{name}.log"

    # --- Open vSwitch --------------------------------------------------------------------
    @property
    def ovs_run_dir(self) -> pathlib.Path:
        return self.run_dir / "ovs"

    @property
    def ovs_db(self) -> pathlib.Path:
        return self.ovs_dir / "conf.db"

    @property
    def ovs_socket(self) -> pathlib.Path:
        return self.ovs_run_dir / "db.sock"

    @property
    def ovsdb_connection(self) -> str:
        return f"unix:{self.ovs_socket}"

    @property
    def system_id_file(self) -> pathlib.Path:
        """This chassis' OVN system-id, generated once."""
        return self.ovs_dir / "system-id"

    # --- OVN -----------------------------------------------------------------------------
    @property
    def ovn_run_dir(self) -> pathlib.Path:
        return self.run_dir / "ovn"

    @property
    def ovn_nb_db(self) -> pathlib.Path:
        return self.ovn_dir / "ovnnb_db.db"

    @property
    def ovn_sb_db(self) -> pathlib.Path:
        return self.ovn_dir / "ovnsb_db.db"

    @property
    def ovn_nb_socket(self) -> pathlib.Path:
        return self.ovn_run_dir / "ovnnb_db.sock"

    @property
    def ovn_sb_socket(self) -> pathlib.Path:
        return self.ovn_run_dir / "ovnsb_db.sock"

    # --- MariaDB -------------------------------------------------------------------------
    @property
    def mysql_run_dir(self) -> pathlib.Path:
        return self.run_dir / "mysql"

    @property
    def mysql_socket(self) -> pathlib.Path:
        return self.mysql_run_dir / "mysqld.sock"

    @property
    def mysql_own_pidfile(self) -> pathlib.Path:
        """The pidfile mariadbd writes itself (kuryr tracks it by its own, see services)."""
        return self.mysql_run_dir / "mariadbd.pid"

    # --- Neutron -------------------------------------------------------------------------
    @property
    def neutron_conf(self) -> pathlib.Path:
        return self.neutron_dir / "neutron.conf"

    @property
    def ml2_conf(self) -> pathlib.Path:
        return self.neutron_dir / "ml2_conf.ini"

    @property
    def wsgi_module(self) -> str:
        """Module name of the WSGI wrapper in ``neutron_dir`` that gunicorn loads."""
        return "kuryr_neutron_wsgi"

    @property
    def wsgi_wrapper(self) -> pathlib.Path:
        return self.neutron_dir / f"{self.wsgi_module}.py"

    @property
    def neutron_state_dir(self) -> pathlib.Path:
        return self.neutron_dir / "state"

    @property
    def neutron_lock_dir(self) -> pathlib.Path:
        return self.neutron_dir / "lock"

    @property
    def neutron_tmp_dir(self) -> pathlib.Path:
        """TMPDIR of Neutron's processes: its worker election files live there, keyed by
        parent PID, so a stale one from an earlier run must not survive a restart."""
        return self.neutron_dir / "tmp"

    # --- Octavia -------------------------------------------------------------------------
    @property
    def octavia_conf(self) -> pathlib.Path:
        return self.octavia_dir / "octavia.conf"

    @property
    def octavia_wsgi_module(self) -> str:
        """Module name of the WSGI wrapper in ``octavia_dir`` that gunicorn loads."""
        return "kuryr_octavia_wsgi"

    @property
    def octavia_wsgi_wrapper(self) -> pathlib.Path:
        return self.octavia_dir / f"{self.octavia_wsgi_module}.py"

    @property
    def octavia_agent_wrapper(self) -> pathlib.Path:
        """The script that runs ``octavia-driver-agent`` with the no-auth group registered;
        its name holds "octavia-driver-agent", as the titles of the agent's children do."""
        return self.octavia_dir / "kuryr-octavia-driver-agent.py"

    def pidfile(self, service: str) -> pathlib.Path:
        """The pidfile of a service that does not write one of its own."""
        return self.run_dir / f"{service}.pid"
