"""Configuration: what an operator writes in kuryr.conf and the environment, and the errors
they get for mistakes."""

import pathlib

import pytest

from kuryr import errors, settings


def test_empty_configuration_has_defaults() -> None:
    config = settings.parse("")
    assert config.cluster_id == "kuryr"
    assert config.binding.ovs_bridge == "br-int"
    assert not config.neutron.is_configured()


def test_cloud_and_binding_options_are_read() -> None:
    config = settings.parse("""
[DEFAULT]
cluster_id = prod-1
[neutron]
cloud = mycloud
clouds_yaml = /etc/openstack/clouds.yaml
port_active_timeout = 12.5
[binding]
host = node-1
ovsdb_connection = unix:/tmp/db.sock
""")
    assert config.cluster_id == "prod-1"
    assert config.neutron.cloud == "mycloud"
    assert config.neutron.clouds_yaml == "/etc/openstack/clouds.yaml"
    assert config.neutron.port_active_timeout == 12.5
    assert config.binding.host == "node-1"
    assert config.binding.ovsdb_connection == "unix:/tmp/db.sock"
    assert config.neutron.is_configured()


def test_upstream_ovs_bridge_name_is_accepted() -> None:
    assert settings.parse("[ovs]\nbridge = br-x\n").binding.ovs_bridge == "br-x"


def test_environment_overrides_file() -> None:
    config = settings.parse("[neutron]\ncloud = a\n", environ={
        "KURYR_NEUTRON_CLOUD": "b", "KURYR_BINDING_HOST": "h2", "KURYR_CLUSTER_ID": "c2"})
    assert (config.neutron.cloud, config.binding.host, config.cluster_id) == ("b", "h2", "c2")


@pytest.mark.parametrize("text, message", [
    ("[neutron]\nclod = x\n", "unknown option 'clod' in [neutron]"),
    ("[nova]\nx = 1\n", "unknown configuration section [nova]"),
    ("[neutron]\ntimeout = soon\n", "timeout = 'soon'"),
    ("[neutron]\nmax_workers = -2\n", "must be positive"),
    ("[DEFAULT]\ncluster_id = a,b\n", "cluster_id"),
    ("neutron]\n", "malformed configuration"),
    ("[cni_daemon]\nmode = k8s\n", "mode = 'k8s': must be one of standalone, kubernetes"),
])
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings.parse(text)


def test_password_is_not_in_repr() -> None:
    config = settings.parse("[neutron]\nauth_url = http://k/\npassword = s3cret\n")
    assert config.neutron.password == "s3cret"
    assert "s3cret" not in repr(config)


def test_config_file_lookup_order(tmp_path: pathlib.Path) -> None:
    explicit = tmp_path / "a.conf"
    explicit.write_text("[neutron]\ncloud = from-file\n")
    env = {"KURYR_CONFIG": str(explicit), "KURYR_CLOUD_STATE_DIR": str(tmp_path / "none")}
    assert settings.load(environ=env).neutron.cloud == "from-file"
    with pytest.raises(errors.ConfigError, match="does not exist"):
        settings.load(tmp_path / "missing.conf", environ=env)
    state = tmp_path / "state"
    state.mkdir()
    (state / "kuryr.conf").write_text("[neutron]\ncloud = local\n")
    found = settings.find_config_file(environ={"KURYR_CLOUD_STATE_DIR": str(state)})
    if not settings.SYSTEM_CONFIG.exists():
        assert found == state / "kuryr.conf"


def test_kubernetes_section_is_read_and_overridable() -> None:
    config = settings.parse("""
[kubernetes]
kubeconfig = /root/.kube/config
pod_subnet_pool = pods
pod_router = 5b1c
""", environ={"KURYR_KUBERNETES_PROJECT_ID": "p1"})
    kubernetes = config.kubernetes
    assert (kubernetes.kubeconfig, kubernetes.api_root) == ("/root/.kube/config", None)
    assert (kubernetes.pod_subnet_pool, kubernetes.pod_router) == ("pods", "5b1c")
    assert kubernetes.project_id == "p1" and kubernetes.workers == 16
    with pytest.raises(errors.ConfigError, match="unknown option 'api' in"):
        settings.parse("[kubernetes]\napi = x\n")


def test_daemon_mode_and_vif_bound_are_read_and_overridable() -> None:
    default = settings.parse("")
    assert (default.cni_daemon.mode, default.cni_daemon.vif_timeout) == ("standalone", 60.0)
    config = settings.parse("[cni_daemon]\nmode = kubernetes\nvif_timeout = 5\n",
                            environ={"KURYR_CNI_DAEMON_VIF_TIMEOUT": "2.5"})
    assert (config.cni_daemon.mode, config.cni_daemon.vif_timeout) == ("kubernetes", 2.5)
