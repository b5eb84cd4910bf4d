"""Store errors; the control API maps them onto gRPC status codes.

Nothing outside the store sees an etcd or gRPC error: `from_grpc` turns every
failed etcd call into one of these.
"""

from __future__ import annotations

import grpc
import grpc.aio


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


class Compacted(StoreError):
    """A read or watch asked for a revision etcd has compacted away."""


class LeaseExpired(StoreError):
    """The lease is gone (expired or revoked): its keys went with it."""


class Removed(StoreError):
    """The object was deleted with a tombstone (Store.delete_remembered): not re-created."""


class Refused(StoreError):
    """etcd refused the request (too large, not permitted, invalid...)."""


_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        # The channel closed under the call (shutdown, reconnect).
        grpc.StatusCode.CANCELLED,
    }
)


def from_grpc(err: grpc.aio.AioRpcError) -> StoreError:
    """The store error for a failed etcd call."""
    code, details = err.code(), err.details() or ""
    if code in _UNAVAILABLE:
        return Unavailable(f"etcd unavailable: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        # etcd says NOT_FOUND only of leases ("requested lease not found").
        return LeaseExpired(f"etcd: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return Compacted(f"etcd: {details}")
    return Refused(f"etcd refused the request ({code.name}): {details}")
