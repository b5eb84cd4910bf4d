"""Network namespaces without fork().

pyroute2 creates namespaces (and sockets inside them) in forked children; a
fork in a process that runs gRPC threads can crash the child in gRPC's own
fork handlers. Here a short-lived thread does the namespace switching
instead: setns()/unshare() affect only the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETLINK_ROUTE = 0
NETNS_DIR = Path("/var/run/netns")

T = TypeVar("T")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _in_thread(fn: Callable[[], T]) -> T:
    """Runs fn in a fresh thread, which may change its own network namespace."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:
            error.append(err)

    t = threading.Thread(target=run, name="netns")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def in_thread(fn: Callable[[], T]) -> T:
    """Runs fn in a fresh thread that may enter another namespace (see `enter`)."""
    return _in_thread(fn)


def enter(fd: int) -> None:
    """Moves the calling thread into the network namespace open at fd."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def socket_in(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in the namespace at path (it stays there wherever it is used)."""

    def work() -> socket.socket:
        target = os.open(path, os.O_RDONLY)
        try:
            enter(target)
            return socket.socket(family, kind, proto)
        finally:
            os.close(target)

    return _in_thread(work)


def _ensure_dir() -> None:
    """/var/run/netns as a shared mount, as iproute2 sets it up."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    d = str(NETNS_DIR).encode()
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "bind /var/run/netns")
        _check(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), "share /var/run/netns")


def create(name: str) -> str:
    """Creates /var/run/netns/<name> (a new, empty namespace); returns its path."""
    path = NETNS_DIR / name

    def work() -> None:
        _ensure_dir()
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
        os.close(fd)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            own = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(own, str(path).encode(), b"none", MS_BIND, None), "bind netns")
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise

    _in_thread(work)
    return str(path)


def remove(name: str) -> None:
    path = NETNS_DIR / name
    _libc.umount2(str(path).encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netlink_socket(path: str) -> socket.socket:
    """A NETLINK_ROUTE socket that lives in the namespace at path."""

    # The thread ends right after; its namespace does not leak to others.
    return socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
