"""The cluster's changes as events (`swarmctl events`, the web view's stream).

Every manager keeps a journal of the changes its watch-fed cache applied since
it started (bounded), each with the etcd revision and the time the manager saw
it. A client asks for the live stream, optionally replayed from a revision or
a time: revisions the journal holds come from it; older ones come from etcd's
own history (a one-off watch from that revision), unless etcd has compacted
them, which is said plainly.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

from shoal.grpcstreams import start_feeding, stop_feeding
from shoal.manager.store import Cache, Change, Kind, Store
from shoal.manager.store.txn import decode
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

TYPES = {Kind.SERVICE: "service", Kind.TASK: "task", Kind.NODE: "node"}
JOURNAL_SIZE = 50_000
# A client that cannot keep up (this many batches queued) is cut off, not buffered forever.
CLIENT_QUEUE = 10_000
# Replayed events go out in messages of this many.
REPLAY_CHUNK = 1000


class SinceCompacted(Exception):
    """The asked-for revision is gone from etcd's history."""

    def __init__(self, message: str, oldest: int = 0) -> None:
        super().__init__(message)
        self.oldest = oldest


class Overrun(Exception):
    """The client fell too far behind."""


def object_name(obj: Any) -> str:
    if isinstance(obj, pb.Task):
        return f"{obj.service_name}.{obj.slot or obj.node_id}"
    if isinstance(obj, pb.Node):
        return obj.description.hostname
    if isinstance(obj, pb.Service):
        return obj.spec.annotations.name
    return ""


@dataclass(frozen=True, slots=True)
class Event:
    time_ms: int
    revision: int
    type: str
    action: str
    id: str
    name: str

    def message(self) -> api.Event:
        return api.Event(
            time_ms=self.time_ms,
            revision=self.revision,
            type=self.type,
            action=self.action,
            id=self.id,
            name=self.name,
        )


def event_of(change: Change, now_ms: int) -> Event | None:
    kind = TYPES.get(change.kind)
    if kind is None:
        return None
    if change.obj is None:
        action, named = "remove", change.old
    else:
        action, named = ("create" if change.old is None else "update"), change.obj
    return Event(now_ms, change.revision, kind, action, change.id, object_name(named))


class Journal:
    """The events this manager saw, and the live feeds of its clients."""

    def __init__(self, cache: Cache, size: int = JOURNAL_SIZE) -> None:
        self.cache = cache
        self.store: Store = cache.store
        self.events: collections.deque[Event] = collections.deque(maxlen=size)
        # Everything after this revision and this time is in the journal (until it wraps).
        self.covers_after = cache.revision
        self.started_ms = int(time.time() * 1000)
        # Each client's feed: one list per batch of changes (None: cut off).
        self._feeds: set[asyncio.Queue[list[Event] | None]] = set()

    async def run(self) -> None:
        with self.cache.subscribe() as sub:
            while True:
                resync, changes = await sub.next()
                if resync:
                    # The watch fell behind a compaction: what changed in between is
                    # unknown; the journal restarts at the cache's new revision.
                    log.warning("events: the watch re-listed; changes before it are not replayed")
                    self.events.clear()
                    self.covers_after = self.cache.revision
                    self.started_ms = int(time.time() * 1000)
                self.add(changes)

    def add(self, changes: Iterable[Change]) -> None:
        now = int(time.time() * 1000)
        batch: list[Event] = []
        for change in changes:
            ev = event_of(change, now)
            if ev is None:
                continue
            if len(self.events) == self.events.maxlen:
                dropped = self.events[0]
                self.covers_after = dropped.revision
                self.started_ms = dropped.time_ms
            self.events.append(ev)
            batch.append(ev)
        if not batch:
            return
        for feed in list(self._feeds):
            if feed.qsize() >= CLIENT_QUEUE:
                self._feeds.discard(feed)
                feed.put_nowait(None)  # tells the client it was cut off
            else:
                feed.put_nowait(batch)

    async def stream(
        self, since_revision: int = 0, since_ms: int = 0, types: frozenset[str] = frozenset()
    ) -> AsyncIterator[list[Event]]:
        """Replayed events (if asked), then live ones, forever; in batches."""
        feed: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        # Subscribed and the journal copied in one step: nothing falls in between.
        self._feeds.add(feed)
        replay = list(self.events) if (since_revision or since_ms) else []
        covers_after, started_ms = self.covers_after, self.started_ms

        def wanted(ev: Event) -> bool:
            return not types or ev.type in types

        try:
            if since_ms and not since_revision and since_ms < started_ms:
                # Before this manager started: etcd's history has the rest, with
                # the time of each object's last write.
                try:
                    async for chunk in self._history(1, covers_after, types):
                        yield [ev for ev in chunk if ev.time_ms >= since_ms]
                except SinceCompacted as err:
                    raise SinceCompacted(
                        f"{_iso(since_ms)} is before etcd's compaction ({err.oldest} is the "
                        f"oldest revision kept): use --since {err.oldest} or a shorter time"
                    ) from None
            elif since_revision and since_revision <= covers_after:
                async for chunk in self._history(since_revision, covers_after, types):
                    yield chunk
            since_revision = max(since_revision, covers_after + 1)
            picked = [
                ev
                for ev in replay
                if ev.revision >= since_revision and ev.time_ms >= since_ms and wanted(ev)
            ]
            for i in range(0, len(picked), REPLAY_CHUNK):
                yield picked[i : i + REPLAY_CHUNK]
            while True:
                batch = await feed.get()
                # Whatever else is queued goes in the same message.
                while batch is not None and not feed.empty():
                    more = feed.get_nowait()
                    batch = None if more is None else batch + more
                if batch is None:
                    raise Overrun("the event stream fell too far behind; reconnect")
                out = [ev for ev in batch if wanted(ev)]
                if out:
                    yield out
        finally:
            self._feeds.discard(feed)

    async def _history(
        self, since: int, until: int, types: frozenset[str]
    ) -> AsyncIterator[list[Event]]:
        """Events of revisions since..until from etcd's history (one watch, then closed)."""
        keys = self.store.keys
        requests: asyncio.Queue[object] = asyncio.Queue()
        # The whole key space: revision `until` is some write, so the watch is sure
        # to reach it even if no object changed at that revision.
        requests.put_nowait(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", start_revision=since, prev_kv=True
                )
            )
        )

        async def outgoing() -> AsyncIterator[object]:
            while True:
                yield await requests.get()

        call = self.store.conn.watch.Watch()
        writer = start_feeding(call, outgoing())
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise SinceCompacted(
                        f"revision {since} is older than etcd's compaction: the oldest "
                        f"revision kept is {resp.compact_revision}",
                        int(resp.compact_revision),
                    )
                chunk = [
                    out
                    for ev in resp.events
                    if int(ev.kv.mod_revision) <= until
                    and (out := self._from_etcd(ev, keys, types)) is not None
                ]
                if chunk:
                    yield chunk
                if resp.events and int(resp.events[-1].kv.mod_revision) >= until:
                    return
        finally:
            await stop_feeding(call, writer)

    def _from_etcd(self, ev: Any, keys: Any, types: frozenset[str]) -> Event | None:
        if not ev.kv.key.startswith(keys.objects):
            return None
        kind, object_id = keys.parse_object_key(ev.kv.key)
        type_ = TYPES.get(kind)
        if type_ is None or (types and type_ not in types):
            return None
        rev = int(ev.kv.mod_revision)
        prev = decode(kind, ev.prev_kv.value, 0) if ev.prev_kv.key else None
        if ev.type == rpc.Event.DELETE:
            obj = None
            # No time is kept for a delete: the last write before it is the best known.
            when = prev.meta.updated_at_ms if prev is not None else 0
        else:
            obj = decode(kind, ev.kv.value, rev)
            when = obj.meta.updated_at_ms
        action = "remove" if obj is None else ("create" if ev.kv.version == 1 else "update")
        return Event(int(when), rev, type_, action, object_id, object_name(obj or prev))


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


async def serve_events(
    journal: Journal | None, request: api.EventsRequest, context: Any
) -> AsyncIterator[api.EventsResponse]:
    """The Events RPC: refused requests end with FAILED_PRECONDITION/INVALID_ARGUMENT."""
    if journal is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this manager keeps no event journal yet")
        return
    bad = sorted(set(request.types) - set(TYPES.values()))
    if bad:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"unknown event type {bad[0]!r}: expected service, task or node",
        )
    if request.since_revision < 0 or request.since_ms < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "--since must not be negative")
    try:
        async for batch in journal.stream(
            request.since_revision, request.since_ms, frozenset(request.types)
        ):
            if batch:
                yield api.EventsResponse(events=[ev.message() for ev in batch])
    except SinceCompacted as err:
        await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(err))
    except Overrun as err:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
