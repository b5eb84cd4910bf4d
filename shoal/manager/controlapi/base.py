"""What every group of control API calls shares: the store and cache, lookups by
ID, name or prefix, and the mapping of domain errors onto gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shoal.manager.dispatcher import Dispatcher
from shoal.manager.pinning import ImagePinner
from shoal.manager.store import AlreadyExists, Cache, Conflict, Kind, NotFound, Store, Unavailable
from shoal.manager.validation import InvalidSpec
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")


class Precondition(Exception):
    """The request is valid but the object is not in a state that allows it."""


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (Precondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_code(err: Exception) -> grpc.StatusCode | None:
    return next((code for cls, code in _CODES if isinstance(err, cls)), None)


# gRPC carries details in a header (8 KiB by default): an echoed 10 KB name would turn a
# clear refusal into RESOURCE_EXHAUSTED.
MAX_DETAILS = 1000


def one_line(err: Exception) -> str:
    text = " ".join(str(err).split("\n"))
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 3] + "..."


def rpc(
    fn: Callable[[Any, Any, Any], Awaitable[R]],
) -> Callable[[Any, Any, Any], Awaitable[R]]:
    """Maps domain errors onto gRPC status codes with the error's sentence as details."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await fn(self, request, context)
        except Exception as err:
            code = status_code(err)
            if code is None:
                log.exception("%s failed", fn.__name__)
                raise
            await context.abort(code, one_line(err))
            raise  # unreachable: abort raises

    return wrapper


MAX_REF = 256
_KIND_WORD = {
    Kind.SERVICE: "service",
    Kind.TASK: "task",
    Kind.NODE: "node",
    Kind.NETWORK: "network",
    Kind.CLUSTER: "cluster",
}


class ControlBase:
    """State and lookups of the control API; each group of RPCs is a subclass."""

    def __init__(
        self,
        store: Store,
        cache: Cache,
        dispatcher: Dispatcher | None = None,
        pinner: ImagePinner | None = None,
        reconciler_idle: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.dispatcher = dispatcher
        self.pinner = pinner or ImagePinner()
        self.reconciler_idle = reconciler_idle

    def resolve(self, kind: Kind, ref: str) -> Any:
        """An object by exact ID, by name (hostname for nodes), or by unique ID prefix."""
        word = _KIND_WORD[kind]
        if not ref:
            raise InvalidSpec(f"a {word} name or ID is required")
        if len(ref) > MAX_REF:
            raise InvalidSpec(f"a {word} name or ID is at most {MAX_REF} characters")
        obj = self.cache.get(kind, ref)
        if obj is not None:
            return obj
        if kind in (Kind.SERVICE, Kind.NETWORK):
            object_id = self.cache.id_by_name(kind, ref)
            if object_id is not None:
                return self.cache.get(kind, object_id)
        elif kind == Kind.NODE:
            named = [n for n in self.cache.list_objects(kind) if n.description.hostname == ref]
            if len(named) == 1:
                return named[0]
            if len(named) > 1:
                raise InvalidSpec(f"{len(named)} nodes are named {ref!r}: use the node ID")
        matches = [i for i in self.cache.ids(kind) if i.startswith(ref)]
        if len(matches) == 1:
            return self.cache.get(kind, matches[0])
        if len(matches) > 1:
            raise InvalidSpec(f"{ref!r} matches {len(matches)} {word}s: use more of the ID")
        raise NotFound(f"{word} {ref!r} not found")

    async def resolve_or_abort(self, kind: Kind, ref: str, context: Any) -> Any:
        """For streaming RPCs (the `rpc` decorator covers unary ones): object or abort."""
        try:
            await self.cache.sync()
            return self.resolve(kind, ref)
        except Exception as err:
            code = status_code(err)
            if code is None:
                raise
            await context.abort(code, one_line(err))
            return None

    def cluster(self) -> pb.Cluster:
        cluster = self.cache.cluster()
        if cluster is None:
            raise Unavailable("the cluster is not initialised yet")
        return cluster
