"""Network namespaces: resolving a name or path, checking it exists, opening a socket inside
one, and (for tools and tests) creating and removing named ones. Does not configure anything
inside a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import socket
import sys

from pyroute2 import netns as _netns

from kuryr import errors

NETNS_RUN_DIR = pathlib.Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


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


def socket_in(netns: str, family: int, kind: int, proto: int) -> socket.socket:
    """A socket created inside ``netns`` (a name or a path); it stays there. The calling thread
    enters the namespace for the one ``socket()`` call and returns to its own (setns(2) is
    per thread): no child process, unlike pyroute2's ``netns=``.

    Raises NamespaceNotFoundError; OSError from ``socket()``. A thread that cannot return to
    its own namespace would do its later work in the wrong one: the process aborts instead
    (a supervisor restarts it, and start-up recovery cleans up).
    """
    path = netns if "/" in netns else str(NETNS_RUN_DIR / netns)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise errors.NamespaceNotFoundError(
                f"network namespace {path} does not exist ({e.strerror})") from e
        try:
            _setns(target, path)
            try:
                return socket.socket(family, kind, proto)
            finally:
                try:
                    _setns(own, "the thread's own namespace")
                except errors.NamespaceNotFoundError as e:
                    sys.stderr.write(f"kuryr: thread stuck in network namespace {path}: {e}; "
                                     "aborting\n")
                    os.abort()
        finally:
            os.close(target)
    finally:
        os.close(own)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise errors.NamespaceNotFoundError(
            f"cannot enter network namespace {what}: {os.strerror(code)}")


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
