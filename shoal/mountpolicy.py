"""Which host paths a task may bind-mount: shared by the manager (refused at the API)
and the agent (which may narrow it further with an allow-list).

A bind of `/`, the kernel's pseudo-filesystems, a container runtime's socket or
Shoal's own state is root on the node for anyone who can create a service.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

# Refused everywhere: the path itself and everything under it (and `/` itself).
FORBIDDEN = (
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/containerd",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/docker",
    "/var/lib/docker",
    "/run/runc",
    "/var/lib/shoal",
    "/run/shoal",
    "/etc/shoal",
)


def under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix + "/") or prefix == "/"


def bind_refusal(source: str, extra_forbidden: Iterable[str] = ()) -> str:
    """Why `source` may not be bind-mounted, or "" when it may."""
    if not source.startswith("/"):
        return f"bind source {source!r} must be an absolute path"
    if ".." in source.split("/"):
        return f"bind source {source!r} may not contain '..'"
    path = posixpath.normpath(source)
    if path == "/":
        return "bind-mounting the host's root directory is not allowed"
    for prefix in (*FORBIDDEN, *extra_forbidden):
        if under(path, prefix):
            return f"bind source {source!r} is under {prefix}, which tasks may not mount"
    return ""


def outside_allowed(source: str, allowed: Iterable[str]) -> str:
    """With an allow-list (`swarmd worker --allow-bind-mount`), why `source` is not in it."""
    prefixes = list(allowed)
    if not prefixes:
        return ""
    path = posixpath.normpath(source)
    if any(under(path, p) for p in prefixes):
        return ""
    return f"bind source {source!r} is outside this node's allowed prefixes ({', '.join(prefixes)})"


@dataclass(frozen=True)
class BindPolicy:
    """A node's own rule: its allow-list (empty: what the API allows) and the paths it
    must protect beyond FORBIDDEN (its state dir, its containerd socket's dir)."""

    allowed: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()

    def refusal(self, source: str) -> str:
        return bind_refusal(source, self.forbidden) or outside_allowed(source, self.allowed)


# A node without an allow-list of its own: what the API allows, and FORBIDDEN.
API_RULES = BindPolicy()
