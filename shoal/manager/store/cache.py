"""An in-memory, watch-fed copy of every object, with the indexes managers read.

Like SwarmKit's memdb or a Kubernetes informer: the control API and the
reconcilers read here (O(1) by id, name, service or node) and write to etcd
through the Store; the watch brings their writes back. `sync()` waits until the
cache has caught up with etcd's current revision, so a read after a write
sees that write.

Objects handed out are shared: callers copy before changing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from shoal import defaults
from shoal.aiotasks import cancel_and_wait, supervised
from shoal.manager.store.errors import StoreError, Unavailable
from shoal.manager.store.kinds import NAMED, Kind, Object, kind_of, name_of
from shoal.manager.store.store import Store
from shoal.manager.store.tally import ServiceTally, Tallies
from shoal.manager.store.watch import Change, Changes, ObjectWatcher, Resync
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# etcd 3.4 before 3.4.24 (Debian 12 has 3.4.23) may send a progress notification
# ahead of the events of a watch that is still catching up (etcd issue 15220):
# trusted, it moved the cache past changes that a dropped stream then never
# sent (the chaos test lost a created service that way). So progress is never
# asked of etcd: a wait that sees no change for this long writes the progress
# key, whose event comes after every earlier one.
PROGRESS_AFTER_S = 0.5
# A read-your-writes wait longer than this means etcd or the watch is stuck.
WAIT_LIMIT_S = 30.0
# A subscriber further behind than this gets a resync instead of its backlog.
MAX_PENDING_CHANGES = 50_000


class Subscription:
    """Batches of changes, in order; a Resync arrives as a batch with `resync` set.

    Bounded: a subscriber that falls more than MAX_PENDING_CHANGES behind (a slow
    `service ps`/events reader) has its backlog dropped and gets one resync instead,
    which says "look at everything again" and costs no memory.
    """

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self.queue: asyncio.Queue[tuple[bool, list[Change]]] = asyncio.Queue()
        self.pending = 0
        self.overflows = 0

    def offer(self, resync: bool, changes: list[Change]) -> None:
        if self.pending + len(changes) > MAX_PENDING_CHANGES:
            self.drain()
            self.overflows += 1
            resync, changes = True, []
        self.pending += len(changes)
        self.queue.put_nowait((resync, changes))

    def close(self) -> None:
        self._cache._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def next(self) -> tuple[bool, list[Change]]:
        """Waits for the next batch; then drains whatever else is queued into it."""
        resync, changes = await self.queue.get()
        self.pending -= len(changes)
        more_resync, more = self.drain()
        return resync or more_resync, changes + more

    def drain(self) -> tuple[bool, list[Change]]:
        """Whatever is queued now, without waiting."""
        resync, changes = False, []
        while not self.queue.empty():
            more_resync, more = self.queue.get_nowait()
            self.pending -= len(more)
            resync = resync or more_resync
            changes.extend(more)
        return resync, changes


class Cache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0
        self._objects: dict[Kind, dict[str, Object]] = {k: {} for k in Kind}
        self._names: dict[Kind, dict[str, str]] = {k: {} for k in NAMED}
        self._by_service: dict[str, dict[str, pb.Task]] = defaultdict(dict)
        self._by_node: dict[str, dict[str, pb.Task]] = defaultdict(dict)
        self._unassigned: dict[str, pb.Task] = {}
        self._unallocated: dict[str, pb.Task] = {}
        self._ips: dict[str, set[str]] = defaultdict(set)
        self._tallies = Tallies()
        self._subscribers: set[Subscription] = set()
        # Lease-bound keys: manager presence, node sessions, the leader key.
        self._live: dict[bytes, bytes] = {}
        # Live managers, id -> address: read at every session start, so kept apart
        # from the (many) session keys rather than filtered out of them.
        self._managers: dict[str, str] = {}
        self._session_feeds: set[asyncio.Queue[str | None]] = set()
        self._manager_feeds: set[asyncio.Queue[None]] = set()
        # Set (and replaced) whenever the cache moves on. An Event, not a Condition:
        # a waiter cancelled by a timeout must not have to re-take a lock (that is
        # how Condition.wait under asyncio.wait_for failed with "Lock is not acquired").
        self._advanced = asyncio.Event()
        self._watcher: ObjectWatcher | None = None
        self._marking: asyncio.Task[None] | None = None
        # Times the watch fell behind etcd's compaction and everything was re-listed.
        self.resyncs = 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        objects, revision = await self.store.list_all()
        self._load(objects, revision)
        self._load_live(await self.store.list_live(revision))
        self._task = supervised("store cache watch", self._watch)

    async def _watch(self) -> None:
        """Follows etcd from what the cache has seen (also after a failure: resumed,
        not lost)."""
        self._watcher = ObjectWatcher(self.store, self.revision + 1)
        await self._run(self._watcher)

    async def stop(self) -> None:
        await cancel_and_wait([self._task, self._marking])

    async def _run(self, watcher: ObjectWatcher) -> None:
        async for item in watcher:
            if isinstance(item, Resync):
                self.resyncs += 1
                self._load(cast(list[Object], item.objects), item.revision)
                self._load_live(item.live)
                self._publish(True, [])
                for feed in self._session_feeds:
                    feed.put_nowait(None)
                for mfeed in self._manager_feeds:
                    mfeed.put_nowait(None)
            else:
                self._apply_live(item.live)
                applied = self._apply(item)
                if applied:
                    self._publish(False, applied)
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()

    # ------------------------------------------------------------ consistency

    async def wait_for(self, revision: int, timeout_s: float = WAIT_LIMIT_S) -> None:
        """Returns once every change up to `revision` is in the cache; Unavailable if the
        cache has not got there within `timeout_s` (etcd or the watch is stuck)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.revision < revision:
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(
                    f"the store cache is at revision {self.revision}, not {revision}, "
                    f"after {timeout_s:g}s"
                )
            try:
                await asyncio.wait_for(self._advanced.wait(), min(PROGRESS_AFTER_S, left))
            except TimeoutError:
                self._mark_progress()

    def _mark_progress(self) -> None:
        """Moves the watch on past revisions with no event of Shoal's (one write at a
        time, however many wait)."""
        if self._marking is None or self._marking.done():
            self._marking = asyncio.create_task(self._put_progress())

    async def _put_progress(self) -> None:
        try:
            await self.store.mark_progress()
        except StoreError as err:  # etcd away: the next wait that times out tries again
            log.debug("writing the progress key: %s", err)

    async def sync(self) -> None:
        """Catches up with etcd's current revision (read-your-writes)."""
        await self.wait_for(await self.store.revision())

    # ------------------------------------------------------------ reads

    def get(self, kind: Kind, object_id: str) -> Any:
        return self._objects[kind].get(object_id)

    def list_objects(self, kind: Kind) -> list[Any]:
        return list(self._objects[kind].values())

    def cluster(self) -> pb.Cluster | None:
        """The cluster object (one per etcd), None before it is created."""
        return next(iter(self._objects[Kind.CLUSTER].values()), None)  # type: ignore[return-value]

    def cluster_spec(self) -> pb.ClusterSpec:
        """The cluster's spec, or the defaults while there is no cluster yet."""
        cluster = self.cluster()
        return cluster.spec if cluster is not None else defaults.cluster_spec()

    def count(self, kind: Kind) -> int:
        return len(self._objects[kind])

    def id_by_name(self, kind: Kind, name: str) -> str | None:
        return self._names[kind].get(name)

    def ids(self, kind: Kind) -> Any:
        return self._objects[kind].keys()

    def tasks_of_service(self, service_id: str) -> list[pb.Task]:
        return list(self._by_service.get(service_id, {}).values())

    def tally(self, service_id: str) -> ServiceTally:
        """The service's task figures (the cache's own: do not change them)."""
        return self._tallies.get(service_id)

    def tasks_of_node(self, node_id: str) -> list[pb.Task]:
        return list(self._by_node.get(node_id, {}).values())

    def unassigned_tasks(self) -> list[pb.Task]:
        """Tasks that want to run and have no node yet: the scheduler's queue."""
        return list(self._unassigned.values())

    def unallocated_tasks(self) -> list[pb.Task]:
        """Tasks still waiting for their overlay addresses: the allocator's queue."""
        return list(self._unallocated.values())

    def used_ips(self, network_id: str) -> set[str]:
        """Addresses held by tasks on a network (the cache's own set: do not change it)."""
        return self._ips.get(network_id, set())

    def managers(self) -> dict[str, str]:
        """Live managers (their presence key is on a kept-alive lease): id -> address."""
        return dict(self._managers)

    def leader_id(self) -> str | None:
        value = self._live.get(self.store.keys.leader)
        return value.decode() if value is not None else None

    def session_owner(self, node_id: str) -> str | None:
        """The manager holding the node's agent session, if any."""
        value = self._live.get(self.store.keys.session(node_id))
        return value.decode() if value is not None else None

    @contextlib.contextmanager
    def session_changes(self) -> Iterator[asyncio.Queue[str | None]]:
        """Node ids whose session key changed; None after a resync (look at all)."""
        feed: asyncio.Queue[str | None] = asyncio.Queue()
        self._session_feeds.add(feed)
        try:
            yield feed
        finally:
            self._session_feeds.discard(feed)

    @contextlib.contextmanager
    def manager_changes(self) -> Iterator[asyncio.Queue[None]]:
        """An item whenever a manager came or went (or after a resync)."""
        feed: asyncio.Queue[None] = asyncio.Queue()
        self._manager_feeds.add(feed)
        try:
            yield feed
        finally:
            self._manager_feeds.discard(feed)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    async def changes(self) -> AsyncIterator[tuple[bool, list[Change]]]:
        with self.subscribe() as sub:
            while True:
                yield await sub.next()

    # ------------------------------------------------------------ internals

    def _load(self, objects: list[Object], revision: int) -> None:
        self._objects = {k: {} for k in Kind}
        self._names = {k: {} for k in NAMED}
        self._by_service = defaultdict(dict)
        self._by_node = defaultdict(dict)
        self._unassigned = {}
        self._unallocated = {}
        self._ips = defaultdict(set)
        self._tallies = Tallies()
        for obj in objects:
            self._put(obj)
        self.revision = revision

    def _load_live(self, live: dict[bytes, bytes]) -> None:
        self._live = {}
        self._managers = {}
        for key, value in live.items():
            self._put_live(key, value)

    def _put_live(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self._live.pop(key, None)
        else:
            self._live[key] = value
        managers = self.store.keys.managers
        if key.startswith(managers):
            manager_id = key[len(managers) :].decode()
            if value is None:
                self._managers.pop(manager_id, None)
            else:
                self._managers[manager_id] = value.decode()

    def _apply_live(self, live: list[tuple[bytes, bytes | None]]) -> None:
        sessions, managers = self.store.keys.sessions, self.store.keys.managers
        managers_changed = False
        for key, value in live:
            self._put_live(key, value)
            managers_changed = managers_changed or key.startswith(managers)
            if key.startswith(sessions):
                node_id = key[len(sessions) :].decode()
                for feed in self._session_feeds:
                    feed.put_nowait(node_id)
        if managers_changed:
            for mfeed in self._manager_feeds:
                mfeed.put_nowait(None)

    def _apply(self, item: Changes) -> list[Change]:
        applied = []
        for change in item.changes:
            old = self._objects[change.kind].get(change.id)
            if change.obj is None:
                self._remove(change.kind, change.id)
            else:
                self._put(cast(Object, change.obj))
            applied.append(Change(change.kind, change.id, change.obj, old, change.revision))
        self.revision = max(self.revision, item.revision)
        return applied

    def _put(self, obj: Object) -> None:
        kind = kind_of(obj)
        old = self._objects[kind].get(obj.id)
        if old is not None:
            self._unindex(kind, old)
        self._objects[kind][obj.id] = obj
        if kind in NAMED:
            name = name_of(obj)
            if name:
                self._names[kind][name] = obj.id
        if isinstance(obj, pb.Task):
            self._by_service[obj.service_id][obj.id] = obj
            self._tallies.put(obj)
            if obj.node_id:
                self._by_node[obj.node_id][obj.id] = obj
            elif obj.desired_state <= pb.RUNNING:
                self._unassigned[obj.id] = obj
            if obj.status.state == pb.NEW and obj.desired_state <= pb.RUNNING:
                self._unallocated[obj.id] = obj
            for a in obj.networks:
                self._ips[a.network_id].update(x.partition("/")[0] for x in a.addresses)

    def _remove(self, kind: Kind, object_id: str) -> None:
        old = self._objects[kind].pop(object_id, None)
        if old is not None:
            self._unindex(kind, old)

    def _unindex(self, kind: Kind, old: Object) -> None:
        if kind in NAMED:
            name = name_of(old)
            if name and self._names[kind].get(name) == old.id:
                del self._names[kind][name]
        if isinstance(old, pb.Task):
            _discard(self._by_service, old.service_id, old.id)
            self._tallies.remove(old)
            if old.node_id:
                _discard(self._by_node, old.node_id, old.id)
            self._unassigned.pop(old.id, None)
            self._unallocated.pop(old.id, None)
            for a in old.networks:
                self._ips[a.network_id].difference_update(x.partition("/")[0] for x in a.addresses)

    def _publish(self, resync: bool, changes: list[Change]) -> None:
        for sub in self._subscribers:
            sub.offer(resync, list(changes))


def _discard(index: dict[str, dict[str, pb.Task]], key: str, task_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(task_id, None)
        if not bucket:
            del index[key]
