"""Checks that the agent can do its job on this host, made once at start.

Task network namespaces are bind mounts the agent makes; runc (started by
containerd) opens them by path. An agent in a mount namespace of its own (started
with `ip netns exec`, say) makes mounts containerd never sees, and every task then
fails with runc's "can't get final child's PID from pipe: EOF". Say so up front.
"""

from __future__ import annotations

import os
import socket
import struct


class HostCheckError(OSError):
    """This host (as the agent sees it) cannot run tasks; the message says why."""


def socket_peer_pid(path: str) -> int:
    """The pid of the process serving a unix socket (SO_PEERCRED); 0 if unknown."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return int(pid)


def mount_ns(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def check_same_mounts_as_containerd(containerd_socket: str) -> None:
    """Refuses to run when containerd cannot see the mounts this agent makes."""
    try:
        pid = socket_peer_pid(containerd_socket)
    except OSError as err:
        raise HostCheckError(f"cannot reach containerd at {containerd_socket}: {err}") from None
    if pid <= 0:
        return  # containerd in another pid namespace: nothing to compare with
    try:
        theirs = mount_ns(pid)
    except OSError:
        return
    if theirs != mount_ns("self"):
        raise HostCheckError(
            f"this agent runs in a different mount namespace than containerd (pid {pid}): "
            "the task network namespaces it mounts would be invisible to runc "
            "(started with `ip netns exec`? use `nsenter --net=/var/run/netns/NAME` instead)"
        )
