"""Watching all objects: a stream of changes that survives etcd hiccups.

A dropped stream is resumed at the last seen revision + 1, so no change is
lost or repeated. If that revision was compacted away, the watcher re-lists
everything at the current revision and hands out a Resync instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from aetcd import rpc

from shoal.grpcstreams import start_feeding, stop_feeding
from shoal.manager.store.kinds import Kind, prefix_end
from shoal.manager.store.store import FAILOVER, REQUIRE_LEADER, Store
from shoal.manager.store.txn import decode

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class Change:
    kind: Kind
    id: str
    # None when the object was deleted.
    obj: object | None
    # What the cache held before (filled in by the cache; None from the raw watch).
    old: object | None = None
    # The etcd revision of the change (a delete's too).
    revision: int = 0


@dataclass(frozen=True)
class Changes:
    """Everything that happened in one or more etcd revisions, up to `revision`."""

    revision: int
    changes: list[Change]
    # Lease-bound keys (Keys.is_live) that were put (value) or deleted (None).
    live: list[tuple[bytes, bytes | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Resync:
    """The full state at `revision`, after the watch fell behind a compaction."""

    revision: int
    objects: list[object]
    live: dict[bytes, bytes] = field(default_factory=dict)


class ObjectWatcher:
    """Yields every change to every object from start_revision on, forever.

    It watches Shoal's whole key space, so every revision Shoal writes arrives
    (as Changes, empty for claim, leader and progress keys) and a reader can wait
    for a revision. Revisions written by others sharing the etcd have no event;
    a reader waiting on one writes the progress key (Store.mark_progress) rather
    than trust etcd's progress notifications (see cache.PROGRESS_AFTER_S).
    """

    def __init__(self, store: Store, start_revision: int) -> None:
        self.store = store
        self.revision = start_revision

    async def __aiter__(self) -> AsyncIterator[Changes | Resync]:
        keys = self.store.keys
        backoff = BACKOFF_MIN_S
        while True:
            requests: asyncio.Queue[object] = asyncio.Queue()
            requests.put_nowait(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        # The whole key space, not only objects: every revision
                        # Shoal writes shows up, so readers can wait for any of them.
                        key=keys.root,
                        range_end=prefix_end(keys.root),
                        start_revision=self.revision,
                    )
                )
            )

            async def outgoing(q: asyncio.Queue[object] = requests) -> AsyncIterator[object]:
                while True:
                    yield await q.get()

            conn, used = self.store.conn, self.store.conn.current
            call = conn.watch.Watch(wait_for_ready=conn.wait_for_ready, metadata=REQUIRE_LEADER)
            writer = start_feeding(call, outgoing())
            compacted = False
            try:
                async for resp in call:
                    backoff = BACKOFF_MIN_S
                    if resp.compact_revision:
                        compacted = True
                        break
                    if resp.canceled:
                        log.warning("etcd canceled the watch: %s", resp.cancel_reason)
                        break
                    if resp.created:
                        continue
                    if not resp.events:
                        continue  # not asked for (and not to be trusted on etcd 3.4.23)
                    changes = []
                    live: list[tuple[bytes, bytes | None]] = []
                    for ev in resp.events:
                        if keys.is_live(ev.kv.key):
                            deleted = ev.type == rpc.Event.DELETE
                            live.append((ev.kv.key, None if deleted else ev.kv.value))
                            continue
                        if not ev.kv.key.startswith(keys.objects):
                            continue  # a claim: only the revision counts
                        kind, object_id = keys.parse_object_key(ev.kv.key)
                        rev = int(ev.kv.mod_revision)
                        if ev.type == rpc.Event.DELETE:
                            changes.append(Change(kind, object_id, None, revision=rev))
                        else:
                            obj = decode(kind, ev.kv.value, rev)
                            changes.append(Change(kind, object_id, obj, revision=rev))
                    last = int(resp.events[-1].kv.mod_revision)
                    self.revision = last + 1
                    yield Changes(last, changes, live)
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "etcd watch dropped (%s); resuming at revision %d", err.code(), self.revision
                )
                if err.code() in FAILOVER:
                    conn.failover(used)
            finally:
                await stop_feeding(call, writer)
            if compacted:
                objects, live_keys, current = await _relist(self.store)
                self.revision = current + 1
                yield Resync(current, objects, live_keys)
                continue
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _relist(store: Store) -> tuple[list[object], dict[bytes, bytes], int]:
    backoff = BACKOFF_MIN_S
    while True:
        try:
            objects, revision = await store.list_all()
            live = await store.list_live(revision)
            return list(objects), live, revision
        except Exception as err:  # etcd away: keep trying, the watcher has nothing else to do
            log.warning("re-list after compaction failed: %s", err)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
