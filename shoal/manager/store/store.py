"""A typed object store on etcd, and the only door to etcd.

Objects are read and written here (see txn.py for how writes become
transactions); so are the lease-bound keys of leader election and manager
presence. Every etcd failure leaves this module as a StoreError (errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from shoal.grpcstreams import feeding
from shoal.manager.store import txn
from shoal.manager.store.errors import (
    Conflict,
    LeaseExpired,
    NotFound,
    NotLeader,
    Removed,
    StoreError,
    from_grpc,
)
from shoal.manager.store.etcd import CALL_TIMEOUT_S, EtcdConnection
from shoal.manager.store.kinds import Keys, Kind, Object, kind_of, prefix_end
from shoal.manager.store.txn import MAX_TXN_OPS, Fence, Op, Update, decode
from shoal.proto import objects_pb2 as pb

T = TypeVar("T", bound=Object)

# etcd refuses requests over --max-request-bytes (1.5 MiB by default); a task carries
# its service's spec, so sixty tasks of a big spec would exceed it. Chunks stay under
# this, which leaves room for keys and framing.
MAX_TXN_BYTES = 1024 * 1024
LIST_PAGE = 1000


@dataclass(frozen=True)
class KeyClaim:
    """The answer to "create this key on my lease": created, or who holds it."""

    created: bool
    # The etcd revision of the answer: the key's create_revision when created.
    revision: int
    # When not created: the current holder's value and lease (None if it vanished).
    value: bytes | None = None
    lease: int = 0


# A member that answers so, or not in time, is given up for the next (several members).
FAILOVER = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# etcd ends a watch carrying this when its member loses the leader (a partitioned
# member's watch would otherwise go quiet): the watcher then moves to another member.
REQUIRE_LEADER = (("hasleader", "true"),)


def chunks(ops: Sequence[Op]) -> list[list[Op]]:
    """ops split, in order, into the fewest transactions etcd takes (operation count
    and request size): how batch_chunked writes them."""
    out: list[list[Op]] = []
    chunk: list[Op] = []
    size = nbytes = 0
    for op in ops:
        cost = txn.op_cost(op)
        op_bytes = op.obj.ByteSize() + 64 * cost  # keys, claims and framing
        if chunk and (size + cost > MAX_TXN_OPS - 1 or nbytes + op_bytes > MAX_TXN_BYTES):
            out.append(chunk)
            chunk, size, nbytes = [], 0, 0
        chunk.append(op)
        size += cost
        nbytes += op_bytes
    if chunk:
        out.append(chunk)
    return out


class Store:
    """Typed CRUD, batches, listing and lease-bound keys over one etcd connection."""

    def __init__(self, conn: EtcdConnection, keys: Keys | None = None) -> None:
        self.conn = conn
        self.keys = keys or Keys()

    async def close(self) -> None:
        await self.conn.close()

    async def _call(self, fn: Callable[..., Awaitable[Any]], request: Any) -> Any:
        used = self.conn.current
        try:
            ready = self.conn.wait_for_ready
            return await fn(request, timeout=CALL_TIMEOUT_S, wait_for_ready=ready)
        except grpc.aio.AioRpcError as err:
            if err.code() in FAILOVER:
                self.conn.failover(used)
            raise from_grpc(err) from err

    # ------------------------------------------------------------ reads

    async def get(self, kind: Kind, object_id: str) -> Object:
        resp = await self._call(
            self.conn.kv.Range, rpc.RangeRequest(key=self.keys.object(kind, object_id))
        )
        if not resp.kvs:
            raise NotFound(f"{kind.value[:-1]} {object_id} not found")
        kv = resp.kvs[0]
        return decode(kind, kv.value, kv.mod_revision)

    async def cluster(self) -> pb.Cluster | None:
        """The cluster object (there is one per etcd), None before it is created."""
        clusters = await self.list_objects(Kind.CLUSTER)
        return clusters[0] if clusters else None  # type: ignore[return-value]

    async def mark_progress(self) -> int:
        """Writes the progress key; returns its revision. Its event on a watch comes
        after every earlier revision's (etcd delivers a watch in revision order)."""
        resp = await self._call(self.conn.kv.Put, rpc.PutRequest(key=self.keys.progress))
        return int(resp.header.revision)

    async def revision(self) -> int:
        """The current etcd revision (a cheap, linearizable read)."""
        resp = await self._call(
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
            resp = await self._call(
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
            resp = await self._call(
                self.conn.kv.Range, rpc.RangeRequest(key=start, range_end=end, revision=revision)
            )
            out.update((kv.key, kv.value) for kv in resp.kvs)
        return out

    # ------------------------------------------------------------ writes

    async def create(self, obj: T) -> T:
        await self.batch([txn.Create(obj)])
        return obj

    async def update(self, obj: T) -> T:
        await self.batch([Update(obj)])
        return obj

    async def delete(self, obj: Object) -> None:
        await self.batch([txn.Delete(obj)])

    async def create_once(self, obj: T) -> tuple[Object, bool]:
        """Creates obj, or returns the object already stored under its id: (object,
        created?), in one transaction (two callers with one id end with one object).

        Raises Removed when that id was deleted with delete_remembered (while its
        tombstone lasts), Conflict when one of obj's claims is taken.
        """
        kind = kind_of(obj)
        key, tomb = self.keys.object(kind, obj.id), self.keys.tombstone(kind, obj.id)
        t = txn.build(self.keys, [txn.Create(obj)])
        resp = await self._call(
            self.conn.kv.Txn,
            rpc.TxnRequest(
                compare=[*t.compares, txn.absent(tomb)],
                success=t.success,
                failure=[txn.get(key), txn.get(tomb)],
            ),
        )
        if resp.succeeded:
            obj.meta.version = int(resp.header.revision)
            return obj, True
        stored, tombstone = (r.response_range.kvs for r in resp.responses)
        if tombstone:
            raise Removed(f"{kind.value[:-1]} {obj.id} was removed")
        if stored:
            return decode(kind, stored[0].value, int(stored[0].mod_revision)), False
        raise txn.conflict([txn.Create(obj)])

    async def delete_remembered(self, obj: Object, ttl_s: int) -> None:
        """Deletes obj as delete() does, leaving a tombstone for ttl_s seconds (on a
        lease, so it goes by itself) under which create_once of its id raises Removed."""
        lease = await self.grant_lease(ttl_s)
        t = txn.build(self.keys, [txn.Delete(obj)])
        tomb = self.keys.tombstone(kind_of(obj), obj.id)
        try:
            resp = await self._call(
                self.conn.kv.Txn,
                rpc.TxnRequest(compare=t.compares, success=[*t.success, txn.put(tomb, b"", lease)]),
            )
            if not resp.succeeded:
                raise txn.conflict([txn.Delete(obj)])
        except StoreError:
            # Nothing was written: the lease would only wait out its TTL for nothing.
            with contextlib.suppress(StoreError):
                await self.revoke_lease(lease)
            raise

    async def batch(self, ops: Sequence[Op], fence: Fence | None = None) -> int:
        """Applies ops in one etcd transaction: all or nothing.

        On success every written object's meta.version is set to the new
        revision, which is returned. Raises Conflict when any compare fails
        (an object changed, exists already, or a name is taken), NotLeader
        when the fence no longer holds.
        """
        t = txn.build(self.keys, ops)
        if fence is not None:
            t.compares.append(fence.compare())
        if len(t.success) > MAX_TXN_OPS or len(t.compares) > MAX_TXN_OPS:
            raise ValueError(f"batch of {len(ops)} ops exceeds one etcd transaction")
        failure = [txn.get(fence.key)] if fence is not None else []
        resp = await self._call(
            self.conn.kv.Txn,
            rpc.TxnRequest(compare=t.compares, success=t.success, failure=failure),
        )
        if not resp.succeeded:
            if fence is not None:
                kvs = resp.responses[0].response_range.kvs
                if not kvs or kvs[0].create_revision != fence.create_revision:
                    raise NotLeader("this manager is no longer the leader")
            raise txn.conflict(ops)
        revision = int(resp.header.revision)
        for obj in t.objects:
            obj.meta.version = revision
        return revision

    async def batch_chunked(self, ops: Sequence[Op], fence: Fence | None = None) -> tuple[int, int]:
        """Applies ops in as few transactions as etcd allows.

        Returns (chunks that conflicted, last revision written).

        For reconcilers: each chunk is atomic, a conflicting chunk is skipped
        (the next reconcile pass sees the newer state and decides again).
        """
        conflicts = revision = 0
        for chunk in chunks(ops):
            conflicts, revision = await self._try(chunk, fence, conflicts, revision)
        return conflicts, revision

    async def _try(
        self, ops: Sequence[Op], fence: Fence | None, conflicts: int, revision: int
    ) -> tuple[int, int]:
        try:
            return conflicts, await self.batch(ops, fence)
        except Conflict:
            return conflicts + 1, revision

    async def compact(self, revision: int) -> None:
        await self._call(
            self.conn.kv.Compact, rpc.CompactionRequest(revision=revision, physical=True)
        )

    # ------------------------------------------------------------ leases

    async def grant_lease(self, ttl_s: int) -> int:
        resp = await self._call(self.conn.lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl_s))
        return int(resp.ID)

    async def revoke_lease(self, lease_id: int) -> None:
        try:
            await self._call(self.conn.lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))
        except LeaseExpired:
            pass  # already expired or revoked: fine

    async def keep_alive(self, lease_id: int, period_s: float) -> AsyncIterator[int]:
        """Refreshes the lease every period_s; yields the TTL etcd granted each time.

        Ends (returns) when etcd says the lease is gone; raises Unavailable
        when etcd cannot be reached.
        """

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield rpc.LeaseKeepAliveRequest(ID=lease_id)
                await asyncio.sleep(period_s)

        used = self.conn.current
        try:
            async with feeding(self.conn.lease.LeaseKeepAlive(), requests()) as call:
                async for resp in call:
                    if resp.TTL <= 0:
                        return
                    yield int(resp.TTL)
        except grpc.aio.AioRpcError as err:
            if err.code() in FAILOVER:
                self.conn.failover(used)
            raise from_grpc(err) from err

    # ------------------------------------------------------------ keys on leases

    async def put_leased(self, items: Sequence[tuple[bytes, bytes]], lease: int) -> None:
        """Writes keys that go when the lease does, in as few transactions as etcd allows."""
        for i in range(0, len(items), MAX_TXN_OPS):
            ops = [txn.put(key, value, lease) for key, value in items[i : i + MAX_TXN_OPS]]
            await self._call(self.conn.kv.Txn, rpc.TxnRequest(success=ops))

    async def delete_if_value(self, key: bytes, value: bytes) -> bool:
        """Deletes key only while it still holds value; says whether it did."""
        resp = await self._call(
            self.conn.kv.Txn,
            rpc.TxnRequest(compare=[txn.value_is(key, value)], success=[txn.delete(key)]),
        )
        return bool(resp.succeeded)

    async def create_leased(self, key: bytes, value: bytes, lease: int) -> KeyClaim:
        """Creates key on the lease if it does not exist; otherwise says who holds it."""
        resp = await self._call(
            self.conn.kv.Txn,
            rpc.TxnRequest(
                compare=[txn.absent(key)],
                success=[txn.put(key, value, lease)],
                failure=[txn.get(key)],
            ),
        )
        revision = int(resp.header.revision)
        if resp.succeeded:
            return KeyClaim(created=True, revision=revision)
        kvs = resp.responses[0].response_range.kvs
        if not kvs:
            return KeyClaim(created=False, revision=revision)
        return KeyClaim(False, revision, bytes(kvs[0].value), int(kvs[0].lease))

    async def wait_deleted(self, key: bytes, after_revision: int) -> None:
        """Returns once key is deleted after `after_revision`, or when etcd can no
        longer tell (the watch was compacted or canceled): look at the key again."""
        requests: asyncio.Queue[Any] = asyncio.Queue()
        requests.put_nowait(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(key=key, start_revision=after_revision + 1)
            )
        )

        async def outgoing() -> AsyncIterator[Any]:
            while True:
                yield await requests.get()

        used = self.conn.current
        call = self.conn.watch.Watch(
            wait_for_ready=self.conn.wait_for_ready, metadata=REQUIRE_LEADER
        )
        try:
            async with feeding(call, outgoing()):
                async for resp in call:
                    if resp.compact_revision or resp.canceled:
                        return
                    if any(ev.type == rpc.Event.DELETE for ev in resp.events):
                        return
        except grpc.aio.AioRpcError as err:
            if err.code() in FAILOVER:
                self.conn.failover(used)
            raise from_grpc(err) from err
