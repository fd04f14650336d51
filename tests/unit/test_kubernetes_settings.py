"""The controller's ``[kubernetes]`` options for subnets, the port pool and garbage
collection: what an operator writes, its defaults, and the errors for mistakes."""

import pytest

from kuryr import errors, settings


def test_defaults_keep_namespace_subnets_no_pool_and_periodic_gc() -> None:
    kubernetes = settings.parse("").kubernetes
    assert kubernetes.pod_subnets_driver == "namespace"
    assert kubernetes.pool_size == 0
    assert kubernetes.gc_interval > 0


def test_default_subnet_driver_pool_and_gc_are_read() -> None:
    kubernetes = settings.parse("""
[kubernetes]
pod_subnets_driver = default
pod_subnet = pods-subnet
pool_size = 20
pool_batch = 5
gc_interval = 60
""").kubernetes
    assert kubernetes.pod_subnets_driver == "default"
    assert kubernetes.pod_subnet == "pods-subnet"
    assert (kubernetes.pool_size, kubernetes.pool_batch, kubernetes.gc_interval) == (20, 5, 60)


def test_zero_turns_the_pool_and_periodic_gc_off_but_not_other_options() -> None:
    config = settings.parse("", environ={"KURYR_KUBERNETES_POOL_SIZE": "0",
                                         "KURYR_KUBERNETES_GC_INTERVAL": "0"})
    assert config.kubernetes.pool_size == 0 and config.kubernetes.gc_interval == 0
    with pytest.raises(errors.ConfigError, match="pool_batch"):
        settings.parse("[kubernetes]\npool_batch = 0\n")
    with pytest.raises(errors.ConfigError, match="pool_size"):
        settings.parse("[kubernetes]\npool_size = -1\n")


@pytest.mark.parametrize("text, message", [
    ("pod_subnets_driver = namespaces", "must be 'namespace' or 'default'"),
    ("pod_subnets_driver = default", "needs pod_subnet"),
])
def test_subnet_driver_mistakes_are_reported(text: str, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        settings.parse(f"[kubernetes]\n{text}\n")
