"""Configuration: what an operator writes in kuryr.conf and the environment, and the errors
they get for mistakes."""

import logging
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
    (state / "clouds.yaml").write_text("clouds: {}\n")  # the local cloud is there
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


def _local_cloud(state: pathlib.Path, *, with_clouds_yaml: bool = True) -> pathlib.Path:
    """A state dir as ``kuryr cloud up`` leaves it: kuryr.conf naming its clouds.yaml."""
    state.mkdir()
    conf = state / "kuryr.conf"
    conf.write_text(f"[neutron]\ncloud = {settings.LOCAL_CLOUD_NAME}\n"
                    f"clouds_yaml = {state / 'clouds.yaml'}\n")
    if with_clouds_yaml:
        (state / "clouds.yaml").write_text("clouds: {}\n")
    return conf


def test_the_local_clouds_file_is_used_only_said_aloud(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """No explicit file, no $KURYR_CONFIG, no /etc/kuryr/kuryr.conf: the local cloud's
    generated file is read, and a WARNING says which file that is and how to choose."""
    conf = _local_cloud(tmp_path / "state")
    env = {"KURYR_CLOUD_STATE_DIR": str(tmp_path / "state")}
    with caplog.at_level(logging.WARNING, logger="kuryr.settings"):
        found = settings.find_config_file(environ=env, system_config=tmp_path / "etc.conf")
    assert found == conf
    [record] = [r for r in caplog.records if r.name == "kuryr.settings"]
    assert record.levelno == logging.WARNING
    assert str(conf) in record.getMessage() and str(tmp_path / "etc.conf") in record.getMessage()
    assert "KURYR_CONFIG" in record.getMessage()
    caplog.clear()
    system = tmp_path / "etc.conf"
    system.write_text("[neutron]\ncloud = production\n")
    with caplog.at_level(logging.INFO, logger="kuryr.settings"):
        assert settings.find_config_file(environ=env, system_config=system) == system
        assert settings.find_config_file(environ={**env, "KURYR_CONFIG": str(conf)},
                                         system_config=system) == conf
    assert not caplog.records, "a file named or in /etc/kuryr is used without a word"


def test_a_left_over_kuryr_conf_without_its_local_cloud_is_not_used(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    _local_cloud(tmp_path / "state", with_clouds_yaml=False)
    env = {"KURYR_CLOUD_STATE_DIR": str(tmp_path / "state")}
    with caplog.at_level(logging.WARNING, logger="kuryr.settings"):
        assert settings.find_config_file(environ=env,
                                         system_config=tmp_path / "etc.conf") is None
    assert not caplog.records
