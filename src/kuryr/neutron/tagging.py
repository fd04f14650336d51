"""The tags kuryr puts on every Neutron resource it creates, naming the owner.

``kuryr`` marks kuryr's resources; ``kuryr-cluster=<id>`` the deployment; owner tags
(``<kind>=<value>``) the container, pod or Docker object. Neutron tags are at most 255
characters and filters split on commas, so neither may appear in a value.
"""

from __future__ import annotations

from kuryr import errors

KURYR = "kuryr"
MAX_TAG_LENGTH = 255


def cluster(cluster_id: str) -> str:
    return f"kuryr-cluster={cluster_id}"


def owner(kind: str, value: str) -> str:
    """An owner tag such as ``owner("cni-container", "<id>")``. Raises PermanentError."""
    tag = f"kuryr-{kind}={value}"
    if len(tag) > MAX_TAG_LENGTH or "," in tag:
        raise errors.PermanentError(f"cannot tag with {tag!r}: longer than 255 or has a comma")
    return tag


def value_of(tags: list[str] | tuple[str, ...], kind: str) -> str | None:
    """The value of the owner tag ``kind`` among ``tags``, if any."""
    prefix = f"kuryr-{kind}="
    return next((t[len(prefix):] for t in tags if t.startswith(prefix)), None)
