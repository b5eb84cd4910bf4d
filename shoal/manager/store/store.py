"""A typed object store on etcd.

Each object is one key (`<prefix>/o/<kind>/<id>`) holding its serialized proto;
its version is the key's mod_revision, so updates are compare-and-swap and a
stale write fails with Conflict instead of overwriting. Unique values (names,
VNIs, subnets) are reserved by claim keys written in the same transaction,
which makes "create if the name is free" atomic even across managers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from shoal.clock import now_ms
from shoal.manager.store.errors import AlreadyExists, Conflict, NotFound, NotLeader, Unavailable
from shoal.manager.store.etcd import CALL_TIMEOUT_S, EtcdConnection
from shoal.manager.store.kinds import (
    MESSAGE,
    Keys,
    Kind,
    Object,
    claims,
    kind_of,
    name_of,
    prefix_end,
)

T = TypeVar("T", bound=Object)

# etcd's default --max-txn-ops is 128; one slot is kept for the leader fence.
MAX_TXN_OPS = 128
LIST_PAGE = 1000


@dataclass
class Create:
    obj: Object


@dataclass
class Update:
    """Compare-and-swap on obj.meta.version.

    `previous` (the version being replaced) is needed when the update changes
    the object's claims, e.g. a task's IP addresses: the claim keys follow.
    """

    obj: Object
    previous: Object | None = None


@dataclass
class Delete:
    """Deletes obj if it still has obj.meta.version (0 = any version)."""

    obj: Object


Op = Create | Update | Delete


@dataclass(frozen=True)
class Fence:
    """A leader's claim: writes go through only while the leader key is still ours."""

    key: bytes
    create_revision: int

    def compare(self) -> Any:
        return rpc.Compare(
            key=self.key,
            target=rpc.Compare.CREATE,
            result=rpc.Compare.EQUAL,
            create_revision=self.create_revision,
        )


@dataclass
class _Txn:
    compares: list[Any] = field(default_factory=list)
    success: list[Any] = field(default_factory=list)
    objects: list[Object] = field(default_factory=list)


def decode(kind: Kind, value: bytes, mod_revision: int) -> Object:
    obj = MESSAGE[kind]()
    obj.ParseFromString(value)
    obj.meta.version = mod_revision
    return obj


def _encode(obj: Object) -> bytes:
    # The version is the key's mod_revision: never stored, so it cannot drift.
    version = obj.meta.version
    obj.meta.version = 0
    try:
        return obj.SerializeToString()
    finally:
        obj.meta.version = version


def _unavailable(err: grpc.aio.AioRpcError) -> Exception:
    code = err.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"etcd unavailable: {err.details()}")
    return err  # type: ignore[no-any-return]


async def etcd_call(fn: Callable[..., Awaitable[Any]], request: Any) -> Any:
    try:
        # wait_for_ready: ride out a reconnect (etcd restart) within the deadline.
        return await fn(request, timeout=CALL_TIMEOUT_S, wait_for_ready=True)
    except grpc.aio.AioRpcError as err:
        raise _unavailable(err) from err


class Store:
    """Typed CRUD, batches and listing over one etcd connection."""

    def __init__(self, conn: EtcdConnection, keys: Keys | None = None) -> None:
        self.conn = conn
        self.keys = keys or Keys()

    async def close(self) -> None:
        await self.conn.close()

    # ------------------------------------------------------------ reads

    async def get(self, kind: Kind, object_id: str) -> Object:
        resp = await etcd_call(
            self.conn.kv.Range, rpc.RangeRequest(key=self.keys.object(kind, object_id))
        )
        if not resp.kvs:
            raise NotFound(f"{kind.value[:-1]} {object_id} not found")
        kv = resp.kvs[0]
        return decode(kind, kv.value, kv.mod_revision)

    async def revision(self) -> int:
        """The current etcd revision (a cheap, linearizable read)."""
        resp = await etcd_call(
            self.conn.kv.Range, rpc.RangeRequest(key=self.keys.leader, count_only=True)
        )
        return int(resp.header.revision)

    async def list_objects(
        self, kind: Kind, *, service_id: str | None = None, node_id: str | None = None
    ) -> list[Object]:
        """Every object of a kind; tasks can be narrowed to a service and/or a node."""
        objects, _ = await self.list_prefix(self.keys.kind_prefix(kind))
        if service_id is not None or node_id is not None:
            objects = [
                t
                for t in objects
                if (service_id is None or getattr(t, "service_id", None) == service_id)
                and (node_id is None or getattr(t, "node_id", None) == node_id)
            ]
        return objects

    async def list_prefix(self, prefix: bytes, revision: int = 0) -> tuple[list[Object], int]:
        """All objects under prefix at one revision, paged; returns them and that revision."""
        out: list[Object] = []
        start, end = prefix, prefix_end(prefix)
        while True:
            resp = await etcd_call(
                self.conn.kv.Range,
                rpc.RangeRequest(key=start, range_end=end, limit=LIST_PAGE, revision=revision),
            )
            # Pin later pages to the first page's revision: one consistent snapshot.
            revision = int(resp.header.revision)
            for kv in resp.kvs:
                kind, _ = self.keys.parse_object_key(kv.key)
                out.append(decode(kind, kv.value, kv.mod_revision))
            if not resp.more:
                return out, revision
            start = resp.kvs[-1].key + b"\0"

    async def list_all(self, revision: int = 0) -> tuple[list[Object], int]:
        return await self.list_prefix(self.keys.objects, revision)

    async def list_live(self, revision: int = 0) -> dict[bytes, bytes]:
        """The lease-bound keys (Keys.is_live) at a revision: presence, sessions, leader."""
        out: dict[bytes, bytes] = {}
        for start, end in (
            (self.keys.presence, prefix_end(self.keys.presence)),
            (self.keys.leader, b""),
        ):
            resp = await etcd_call(
                self.conn.kv.Range, rpc.RangeRequest(key=start, range_end=end, revision=revision)
            )
            out.update((kv.key, kv.value) for kv in resp.kvs)
        return out

    # ------------------------------------------------------------ writes

    async def create(self, obj: T) -> T:
        await self.batch([Create(obj)])
        return obj

    async def update(self, obj: T) -> T:
        await self.batch([Update(obj)])
        return obj

    async def delete(self, obj: Object) -> None:
        await self.batch([Delete(obj)])

    async def batch(self, ops: Sequence[Op], fence: Fence | None = None) -> int:
        """Applies ops in one etcd transaction: all or nothing.

        On success every written object's meta.version is set to the new
        revision, which is returned. Raises Conflict when any compare fails
        (an object changed, exists already, or a name is taken), NotLeader
        when the fence no longer holds.
        """
        txn = self._build(ops)
        if fence is not None:
            txn.compares.append(fence.compare())
        if len(txn.success) > MAX_TXN_OPS or len(txn.compares) > MAX_TXN_OPS:
            raise ValueError(f"batch of {len(ops)} ops exceeds one etcd transaction")
        failure = []
        if fence is not None:
            failure.append(rpc.RequestOp(request_range=rpc.RangeRequest(key=fence.key)))
        resp = await etcd_call(
            self.conn.kv.Txn,
            rpc.TxnRequest(compare=txn.compares, success=txn.success, failure=failure),
        )
        if not resp.succeeded:
            if fence is not None:
                kvs = resp.responses[0].response_range.kvs
                if not kvs or kvs[0].create_revision != fence.create_revision:
                    raise NotLeader("this manager is no longer the leader")
            raise self._conflict(ops)
        revision = int(resp.header.revision)
        for obj in txn.objects:
            obj.meta.version = revision
        return revision

    async def batch_chunked(self, ops: Sequence[Op], fence: Fence | None = None) -> tuple[int, int]:
        """Applies ops in as few transactions as etcd allows.

        Returns (chunks that conflicted, last revision written).

        For reconcilers: each chunk is atomic, a conflicting chunk is skipped
        (the next reconcile pass sees the newer state and decides again).
        """
        conflicts = revision = 0
        chunk: list[Op] = []
        size = 0
        for op in ops:
            cost = 1 + len(claims(op.obj))
            if isinstance(op, Update) and op.previous is not None:
                cost += len(claims(op.previous))
            if size + cost > MAX_TXN_OPS - 1 and chunk:
                conflicts, revision = await self._try(chunk, fence, conflicts, revision)
                chunk, size = [], 0
            chunk.append(op)
            size += cost
        if chunk:
            conflicts, revision = await self._try(chunk, fence, conflicts, revision)
        return conflicts, revision

    async def _try(
        self, ops: Sequence[Op], fence: Fence | None, conflicts: int, revision: int
    ) -> tuple[int, int]:
        try:
            return conflicts, await self.batch(ops, fence)
        except Conflict:
            return conflicts + 1, revision

    def _build(self, ops: Sequence[Op]) -> _Txn:
        txn = _Txn()
        stamp = now_ms()
        for op in ops:
            obj = op.obj
            kind = kind_of(obj)
            key = self.keys.object(kind, obj.id)
            claim_keys = [self.keys.claim(kind, c) for c in claims(obj)]
            if isinstance(op, Create):
                obj.meta.created_at_ms = obj.meta.created_at_ms or stamp
                obj.meta.updated_at_ms = stamp
                txn.compares.append(_absent(key))
                txn.success.append(_put(key, _encode(obj)))
                for claim_key in claim_keys:
                    txn.compares.append(_absent(claim_key))
                    txn.success.append(_put(claim_key, obj.id.encode()))
                txn.objects.append(obj)
            elif isinstance(op, Update):
                obj.meta.updated_at_ms = stamp
                txn.compares.append(_version_is(key, obj.meta.version))
                txn.success.append(_put(key, _encode(obj)))
                if op.previous is not None:
                    old, new = set(claims(op.previous)), set(claims(obj))
                    for claim in sorted(new - old):
                        claim_key = self.keys.claim(kind, claim)
                        txn.compares.append(_absent(claim_key))
                        txn.success.append(_put(claim_key, obj.id.encode()))
                    txn.success.extend(
                        rpc.RequestOp(
                            request_delete_range=rpc.DeleteRangeRequest(
                                key=self.keys.claim(kind, claim)
                            )
                        )
                        for claim in sorted(old - new)
                    )
                txn.objects.append(obj)
            else:
                if obj.meta.version:
                    txn.compares.append(_version_is(key, obj.meta.version))
                txn.success.append(
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))
                )
                txn.success.extend(
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=claim_key))
                    for claim_key in claim_keys
                )
        return txn

    def _conflict(self, ops: Sequence[Op]) -> Exception:
        if len(ops) == 1 and isinstance(ops[0], Create):
            obj = ops[0].obj
            kind = kind_of(obj)
            name = name_of(obj)
            what = f"{kind.value[:-1]} {name!r}" if name else f"{kind.value[:-1]} {obj.id}"
            if len(claims(obj)) > 1:
                return AlreadyExists(
                    f"{what} conflicts with an existing one ({', '.join(claims(obj))})"
                )
            return AlreadyExists(f"{what} already exists")
        if len(ops) == 1:
            obj = ops[0].obj
            return Conflict(
                f"{kind_of(obj).value[:-1]} {obj.id} was changed or removed by someone else "
                f"(version {obj.meta.version} is out of date)"
            )
        return Conflict(f"a batch of {len(ops)} writes conflicted with a concurrent change")

    # ------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: int) -> int:
        resp = await etcd_call(self.conn.lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl_s))
        return int(resp.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await etcd_call(self.conn.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:  # already expired or revoked: fine
                raise

    async def keep_alive(self, lease_id: int, period_s: float) -> AsyncIterator[int]:
        """Refreshes the lease every period_s; yields the TTL etcd granted each time.

        Ends (returns) when etcd says the lease is gone; raises Unavailable
        when etcd cannot be reached.
        """

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield rpc.LeaseKeepAliveRequest(ID=lease_id)
                await asyncio.sleep(period_s)

        call = self.conn.lease.LeaseKeepAlive(requests())
        try:
            async for resp in call:
                if resp.TTL <= 0:
                    return
                yield int(resp.TTL)
        except grpc.aio.AioRpcError as err:
            raise _unavailable(err) from err
        finally:
            call.cancel()

    async def compact(self, revision: int) -> None:
        await etcd_call(
            self.conn.kv.Compact, rpc.CompactionRequest(revision=revision, physical=True)
        )


def _absent(key: bytes) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
    )


def _version_is(key: bytes, version: int) -> Any:
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=version
    )


def _put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))
