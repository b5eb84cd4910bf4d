"""Store errors; the control API maps them onto gRPC status codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base of all store errors."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """A compare-and-swap failed: someone else wrote the object first."""


class NotLeader(StoreError):
    """A fenced write was refused because this manager is no longer the leader."""


class Unavailable(StoreError):
    """etcd could not be reached within the deadline."""
