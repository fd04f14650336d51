"""Network namespaces: resolving a name or path, checking it exists, and (for tools and tests)
creating and removing named ones. Does not configure anything inside a namespace.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

from pyroute2 import netns as _netns

from kuryr import errors

NETNS_RUN_DIR = pathlib.Path("/run/netns")


def resolve(netns: str) -> str:
    """The filesystem path of a namespace given as a name (``/run/netns/<name>``) or a path
    (``/run/netns/x``, ``/proc/<pid>/ns/net``).

    Raises NamespaceNotFoundError when it does not exist or is not a network namespace.
    """
    if not netns:
        raise errors.NamespaceNotFoundError("no network namespace given")
    path = netns if "/" in netns else str(NETNS_RUN_DIR / netns)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise errors.NamespaceNotFoundError(
            f"network namespace {netns} does not exist ({e.strerror})") from e
    try:
        if not _is_netns(fd):
            raise errors.NamespaceNotFoundError(f"{netns} is not a network namespace")
    finally:
        os.close(fd)
    return path


def _is_netns(fd: int) -> bool:
    # Every namespace file (a bind mount under /run/netns or /proc/<pid>/ns/net) lives on the
    # one nsfs device; a plain file or directory does not.
    return os.fstat(fd).st_dev == os.stat("/proc/self/ns/net").st_dev


def exists(netns: str) -> bool:
    try:
        resolve(netns)
    except errors.NamespaceNotFoundError:
        return False
    return True


def create(name: str) -> str:
    """Create a named namespace (``ip netns add``); returns its path. Idempotent."""
    if not exists(name):
        with contextlib.suppress(FileExistsError):  # made meanwhile: the same outcome
            _netns.create(name)
    return str(NETNS_RUN_DIR / name)


def remove(name: str) -> None:
    """Remove a named namespace; a missing one is fine."""
    try:
        _netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != 2:
            raise
