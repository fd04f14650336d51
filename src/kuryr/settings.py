"""Configuration: an INI file (upstream ``kuryr.conf`` names where they exist) loaded into
frozen dataclasses, with environment overrides.

Owns finding, reading and validating the configuration. It does not create clients or touch
the network. Lookup order for the file: an explicit path, ``$KURYR_CONFIG``,
``/etc/kuryr/kuryr.conf``, then the local cloud's generated file (``<state dir>/kuryr.conf``,
only while the local cloud's ``clouds.yaml`` is beside it, and never without a WARNING naming
it: a host without its own configuration must not use a development cloud's unnoticed). Any
option can be overridden from the environment as
``KURYR_<SECTION>_<OPTION>`` (upper case), e.g. ``KURYR_NEUTRON_CLOUD=mycloud``.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import logging
import os
import pathlib
import socket
import typing
from collections.abc import Mapping

from kuryr import errors

LOG = logging.getLogger(__name__)
SYSTEM_CONFIG = pathlib.Path("/etc/kuryr/kuryr.conf")
DEFAULT_STATE_DIR = pathlib.Path("/var/lib/kuryr/cloud")
LOCAL_CLOUD_NAME = "kuryr-local"
MODES = ("standalone", "kubernetes")  # of the node daemon, [cni_daemon] mode
READINESS = ("auto", "ovn", "neutron")  # [binding] readiness


@dataclasses.dataclass(frozen=True)
class NeutronSettings:
    """How to reach Neutron: a clouds.yaml cloud, or explicit auth options."""

    cloud: str | None = None
    clouds_yaml: str | None = None
    auth_type: str | None = None
    auth_url: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    project_name: str | None = None
    project_id: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    endpoint_override: str | None = None
    timeout: float = 30.0
    max_workers: int = 8
    port_active_timeout: float = 30.0
    # Seconds a network's and subnet's attributes (MTU, gateway, routes) read for one port's
    # VIF are reused for the next port's (0: read them for every port).
    vif_cache_ttl: float = 30.0

    def is_configured(self) -> bool:
        return bool(self.cloud or self.auth_url or self.endpoint_override)


@dataclasses.dataclass(frozen=True)
class BindingSettings:
    """How ports are plugged on this host, and when a plugged port counts as ready.

    ``readiness`` is ``ovn`` (ready once this node's ovn-controller has installed the port's
    flows: ``external_ids:ovn-installed="true"`` on its OVS Interface, learnt from the OVSDB
    connection kuryr holds, no Neutron call), ``neutron`` (ready once Neutron reports the port
    ACTIVE: any ML2 backend) or ``auto`` (``ovn`` when the node is configured for
    ovn-controller, ``external_ids:ovn-remote`` on the Open_vSwitch row; else ``neutron``).
    """

    host: str = dataclasses.field(default_factory=socket.gethostname)
    ovs_bridge: str = "br-int"
    ovsdb_connection: str = "unix:/run/openvswitch/db.sock"
    ovsdb_timeout: float = 10.0
    readiness: str = "auto"

    def __post_init__(self) -> None:
        if self.readiness not in READINESS:
            raise errors.ConfigError(f"[binding] readiness = {self.readiness!r}: must be one "
                                     f"of {', '.join(READINESS)}")


@dataclasses.dataclass(frozen=True)
class CniDaemonSettings:
    """The node daemon serving CNI requests (``kuryr daemon``) and its warm port pool.

    ``mode`` is ``standalone`` (the daemon creates and deletes each container's Neutron port:
    podman, containerd) or ``kubernetes`` (it plugs the VIF the controller wrote into the pod's
    KuryrPort and never calls Neutron; ``[kubernetes]`` says where the API is and ``[binding]
    host`` is the node's name). In Kubernetes mode ADD waits up to ``vif_timeout`` seconds for
    the pod's VIF, and as long again for it to become active once plugged; STATUS and
    ``/readyz`` say not ready while its watch of KuryrPorts has failed for longer than
    ``watch_stale_after`` seconds. With ``preplug`` it plugs the pool ports the controller lists
    in the node's KuryrNodePool ahead of their pods, so that ADD only hands one over.
    """

    mode: str = "standalone"
    vif_timeout: float = 60.0
    # Kubernetes mode: plug the pool ports the controller lists for this node ahead of pods.
    preplug: bool = True
    watch_stale_after: float = 30.0
    socket: str = "/run/kuryr/kuryr-cni.sock"
    health_address: str = "127.0.0.1"
    health_port: int = 8090
    # How long ADD waits for a new port to become ACTIVE.
    port_active_timeout: float = 30.0
    # The warm pool: ready ports per (network, security groups); off by default standalone.
    pool_enabled: bool = False
    pool_size: int = 3
    pool_batch: int = 5
    # How long a request waits for its container's lock before the runtime hears "busy" (11).
    lock_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise errors.ConfigError(f"[cni_daemon] mode = {self.mode!r}: must be one of "
                                     f"{', '.join(MODES)}")


@dataclasses.dataclass(frozen=True)
class LibnetworkSettings:
    """The Docker remote network and IPAM driver (``kuryr libnetwork``).

    ``scope`` is what ``GetCapabilities`` answers (``local``: networks of this Docker host;
    ``global``: shared by a swarm). The default pools are the Neutron subnet pools a network
    created without ``--subnet`` takes its prefix from; ``wait_active`` makes ``Join`` wait
    until Neutron reports the port ACTIVE, so a container's first packet is not lost.

    With ``pool_enabled`` the driver keeps, per Docker network on kuryr's IPAM, ``pool_size``
    ready ports (plugged, ACTIVE; created ``pool_batch`` at a time, in the background): a
    container whose address kuryr chooses then starts with no Neutron call, and its port goes
    back to the pool (or is deleted) in the background when it is removed.
    """

    socket_path: str = "/run/docker/plugins/kuryr.sock"
    scope: str = "local"
    default_pool_v4: str = "10.250.0.0/16"
    default_prefixlen_v4: int = 24
    default_pool_v6: str = "fd25:6b75:7279::/48"
    default_prefixlen_v6: int = 64
    wait_active: bool = True
    pool_enabled: bool = True
    pool_size: int = 3
    pool_batch: int = 3

    def __post_init__(self) -> None:
        if self.scope not in ("local", "global"):
            raise errors.ConfigError(
                f"[libnetwork] scope = {self.scope!r}: must be 'local' or 'global'")
        for option, version in (("default_pool_v4", 4), ("default_pool_v6", 6)):
            value = getattr(self, option)
            try:
                network = ipaddress.ip_network(value)
            except ValueError as e:
                raise errors.ConfigError(f"[libnetwork] {option} = {value!r}: {e}") from e
            if network.version != version:
                raise errors.ConfigError(
                    f"[libnetwork] {option} = {value!r}: not an IPv{version} prefix")


@dataclasses.dataclass(frozen=True)
class KubernetesSettings:
    """The Kubernetes side of ``kuryr controller`` (``[kubernetes]``, upstream names where
    they exist).

    ``api_root`` (an API server URL, no authentication) or ``kubeconfig`` (a file) say where
    the API is; with neither, the in-cluster service account is used. Namespace subnets come
    from ``pod_subnet_pool`` and are attached to ``pod_router``; a namespace without the
    ``openstack.org/kuryr-project`` annotation lands in ``project_id`` (None: the project of
    the Neutron credentials).

    With ``leader_election`` only the holder of the Lease ``lease_namespace/lease_name`` acts:
    it renews every ``lease_renew`` seconds and steps down when it could not for
    ``lease_duration - lease_renew``; the others try every ``lease_retry`` seconds and take
    the Lease once it is ``lease_duration`` old. ``health_port`` serves ``/healthz``,
    ``/readyz`` and ``/metrics`` on ``health_host``.

    ``pod_subnets_driver`` (upstream's name and values): ``namespace`` gives each namespace
    a network and subnet of its own; ``default`` puts every pod on the subnet ``pod_subnet``
    (an ID or name) and makes no network per namespace. With ``pool_size`` > 0 the controller
    keeps that many ready ports per node, network and project, bound to the node, created
    ``pool_batch`` at a time (0: no pool), and lists them in the node's KuryrNodePool, whose
    daemon plugs them ahead of their pods; with ``pool_recycle`` a deleted pod's port goes
    back into its node's pool when that has room, instead of being deleted. Every
    ``gc_interval`` seconds the leader removes the Neutron resources of this cluster whose
    owner is gone (0: only ``kuryr gc``).
    """

    api_root: str | None = None
    kubeconfig: str | None = None
    pod_subnet_pool: str | None = None
    pod_router: str | None = None
    project_id: str | None = None
    workers: int = 16
    port_active_poll: float = 1.0
    leader_election: bool = True
    lease_name: str = "kuryr-controller"
    lease_namespace: str = "kube-system"
    lease_duration: float = 6.0
    lease_renew: float = 2.0
    lease_retry: float = 1.0
    health_host: str = "127.0.0.1"
    health_port: int = 8082
    pod_subnets_driver: str = "namespace"
    pod_subnet: str | None = None
    pool_size: int = dataclasses.field(default=0, metadata={"zero_is_off": True})
    pool_batch: int = 10
    pool_recycle: bool = True
    gc_interval: float = dataclasses.field(default=300.0, metadata={"zero_is_off": True})
    # Services (upstream's [neutron_defaults] names, kept in [kubernetes] here): the Neutron
    # subnet (name or ID) whose addresses are the cluster's clusterIPs (load balancers' VIPs),
    # and the external network floating IPs of type=LoadBalancer Services come from.
    service_subnet: str | None = None
    external_svc_net: str | None = None
    # NetworkPolicy as Neutron security groups and address groups (``podgroups``): pods'
    # ports get kuryr's groups instead of their project's default group.
    network_policy: bool = False

    def __post_init__(self) -> None:
        if self.pod_subnets_driver not in ("namespace", "default"):
            raise errors.ConfigError(
                f"[kubernetes] pod_subnets_driver = {self.pod_subnets_driver!r}: must be "
                "'namespace' or 'default'")
        if self.pod_subnets_driver == "default" and not self.pod_subnet:
            raise errors.ConfigError("[kubernetes] pod_subnets_driver = default needs pod_subnet")
        if self.pool_size < 0 or self.gc_interval < 0:
            raise errors.ConfigError("[kubernetes] pool_size and gc_interval must not be negative")


@dataclasses.dataclass(frozen=True)
class OctaviaSettings:
    """Octavia, for Services (``[octavia_defaults]``, upstream's section name).

    Octavia is reached with the ``[neutron]`` credentials (a clouds.yaml cloud names its
    load-balancer endpoint itself; ``endpoint_override`` is for explicit options without
    Keystone). Load balancers are made by ``provider`` with ``lb_algorithm`` (the OVN provider
    takes only SOURCE_IP_PORT and SOURCE_IP); ``timeout_client_data`` and
    ``timeout_member_data`` (milliseconds, 0: Octavia's default) go on every listener unless
    a Service's annotation says otherwise; waits for a provisioning status are bounded by
    ``provisioning_timeout`` seconds.
    """

    endpoint_override: str | None = None
    provider: str = "ovn"
    lb_algorithm: str = "SOURCE_IP_PORT"
    timeout_client_data: int = dataclasses.field(default=0, metadata={"zero_is_off": True})
    timeout_member_data: int = dataclasses.field(default=0, metadata={"zero_is_off": True})
    provisioning_timeout: float = 120.0


@dataclasses.dataclass(frozen=True)
class KuryrSettings:
    """Everything kuryr reads from its configuration."""

    cluster_id: str = "kuryr"
    neutron: NeutronSettings = dataclasses.field(default_factory=NeutronSettings)
    binding: BindingSettings = dataclasses.field(default_factory=BindingSettings)
    cni_daemon: CniDaemonSettings = dataclasses.field(default_factory=CniDaemonSettings)
    libnetwork: LibnetworkSettings = dataclasses.field(default_factory=LibnetworkSettings)
    kubernetes: KubernetesSettings = dataclasses.field(default_factory=KubernetesSettings)
    octavia: OctaviaSettings = dataclasses.field(default_factory=OctaviaSettings)
    source: str | None = None


# Section and option names as they appear in kuryr.conf, mapped to the dataclass holding them.
_SECTIONS: dict[str, type[NeutronSettings] | type[BindingSettings] | type[CniDaemonSettings]
                | type[LibnetworkSettings] | type[KubernetesSettings]
                | type[OctaviaSettings]] = {
    "neutron": NeutronSettings,
    "binding": BindingSettings,
    "cni_daemon": CniDaemonSettings,
    "libnetwork": LibnetworkSettings,
    "kubernetes": KubernetesSettings,
    "octavia_defaults": OctaviaSettings,
}
# Upstream kuryr.conf names that we accept as aliases of ours.
_ALIASES = {("ovs", "bridge"): ("binding", "ovs_bridge")}
# Sections read by the components that own them, not by these settings.
_FOREIGN_SECTIONS = frozenset({"pool_manager"})
_T = typing.TypeVar("_T")


def find_config_file(explicit: str | os.PathLike[str] | None = None,
                     *, environ: Mapping[str, str] | None = None,
                     system_config: pathlib.Path = SYSTEM_CONFIG) -> pathlib.Path | None:
    """Return the configuration file to read, or None when there is none.

    The local cloud's file (``$KURYR_CLOUD_STATE_DIR`` or ``DEFAULT_STATE_DIR``) comes last,
    only when the local cloud is there (its ``clouds.yaml`` beside it: a ``kuryr.conf`` left
    alone is not taken), and is logged at WARNING as it is taken. Raises ConfigError when a
    file named explicitly or by ``$KURYR_CONFIG`` does not exist.
    """
    env = os.environ if environ is None else environ
    for named in (explicit, env.get("KURYR_CONFIG")):
        if named:
            path = pathlib.Path(named)
            if not path.is_file():
                raise errors.ConfigError(f"configuration file {path} does not exist")
            return path
    if system_config.is_file():
        return system_config
    state_dir = pathlib.Path(env.get("KURYR_CLOUD_STATE_DIR") or DEFAULT_STATE_DIR)
    local = state_dir / "kuryr.conf"
    if local.is_file() and (state_dir / "clouds.yaml").is_file():
        LOG.warning("no %s, no --config and no $KURYR_CONFIG: using the local cloud's "
                    "configuration %s (made by 'kuryr cloud up'); name a file with --config "
                    "or KURYR_CONFIG to choose another", system_config, local)
        return local
    return None


def load(explicit: str | os.PathLike[str] | None = None,
         *, environ: Mapping[str, str] | None = None) -> KuryrSettings:
    """Read the configuration file (see module doc) and the environment overrides.

    Raises ConfigError on a missing named file, an unknown option or a malformed value.
    """
    env = os.environ if environ is None else environ
    path = find_config_file(explicit, environ=env)
    parser = configparser.ConfigParser(interpolation=None)
    if path is not None:
        try:
            with path.open(encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as e:
            raise errors.ConfigError(f"cannot read configuration file {path}: {e}") from e
    return from_parser(parser, environ=env, source=str(path) if path else None)


def parse(text: str, *, environ: Mapping[str, str] | None = None) -> KuryrSettings:
    """Build settings from INI text (and the environment, if given)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as e:
        raise errors.ConfigError(f"malformed configuration: {e}") from e
    return from_parser(parser, environ=environ or {}, source=None)


def from_parser(parser: configparser.ConfigParser, *, environ: Mapping[str, str],
                source: str | None) -> KuryrSettings:
    """Validate a parsed INI file plus environment overrides into KuryrSettings."""
    values: dict[str, dict[str, str]] = {name: {} for name in _SECTIONS}
    top: dict[str, str] = {}
    for section in parser.sections():
        for option, value in parser.items(section):
            target = _ALIASES.get((section, option), (section, option))
            if section in _FOREIGN_SECTIONS or option in parser.defaults():
                continue
            if target[0] not in values:
                raise errors.ConfigError(f"unknown configuration section [{section}]")
            values[target[0]][target[1]] = value
    for option, value in parser.defaults().items():
        top[option] = value
    for key, value in environ.items():
        if not key.startswith("KURYR_"):
            continue
        rest = key[len("KURYR_"):].lower()
        for name in _SECTIONS:
            if rest.startswith(name + "_"):
                values[name][rest[len(name) + 1:]] = value
        if rest == "cluster_id":
            top["cluster_id"] = value
    neutron = _build(NeutronSettings, "neutron", values["neutron"])
    binding = _build(BindingSettings, "binding", values["binding"])
    libnetwork = _build(LibnetworkSettings, "libnetwork", values["libnetwork"])
    cni_daemon = _build(CniDaemonSettings, "cni_daemon", values["cni_daemon"])
    kubernetes = _build(KubernetesSettings, "kubernetes", values["kubernetes"])
    octavia = _build(OctaviaSettings, "octavia_defaults", values["octavia_defaults"])
    cluster_id = top.get("cluster_id", "kuryr")
    if not cluster_id or any(c.isspace() or c == "," for c in cluster_id):
        raise errors.ConfigError(f"cluster_id {cluster_id!r} must be a word without ',' or spaces")
    return KuryrSettings(cluster_id=cluster_id, neutron=neutron, binding=binding,
                         cni_daemon=cni_daemon, libnetwork=libnetwork, kubernetes=kubernetes,
                         octavia=octavia, source=source)


def _build(cls: type[_T], section: str, raw: dict[str, str]) -> _T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    for option, value in raw.items():
        field = fields.get(option)
        if field is None:
            known = ", ".join(sorted(fields))
            raise errors.ConfigError(f"unknown option {option!r} in [{section}]; known: {known}")
        kwargs[option] = _convert(section, option, value, field.type,
                                  may_be_zero=bool(field.metadata.get("zero_is_off")))
    return cls(**kwargs)


def _convert(section: str, option: str, value: str, type_name: object, *,
             may_be_zero: bool = False) -> object:
    kind = str(type_name)
    if kind == "bool":
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise errors.ConfigError(f"[{section}] {option} = {value!r}: not a boolean (true/false)")
    try:
        if kind.startswith("float"):
            number = float(value)
            if number < 0 or (number == 0 and not may_be_zero):
                raise ValueError("must be positive" + (" or 0 (off)" if may_be_zero else ""))
            return number
        if kind.startswith("int"):
            integer = int(value)
            if integer < 0 or (integer == 0 and not may_be_zero):
                raise ValueError("must be positive" + (" or 0 (off)" if may_be_zero else ""))
            return integer
    except ValueError as e:
        raise errors.ConfigError(f"[{section}] {option} = {value!r}: {e}") from e
    return value.strip() or None if "None" in kind else value.strip()
