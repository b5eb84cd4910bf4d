"""The leader's control loop: orchestrators, then the scheduler, then one batched write.

Level-triggered: a change only marks what to look at; every pass decides from
the cache. A pass's writes are waited for in the cache before the next pass,
so it never acts twice on the same state.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable

from shoal.clock import now_ms
from shoal.manager.allocator import IPAM
from shoal.manager.orchestrator import Orchestrator, Plan
from shoal.manager.orchestrator.plan import write_order
from shoal.manager.scheduler import Scheduler
from shoal.manager.store import (
    Cache,
    Change,
    Fence,
    Kind,
    Refused,
    Store,
    Subscription,
    Update,
)
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

REFUSED_BACKOFF_MIN_S = 1.0
REFUSED_BACKOFF_MAX_S = 30.0
# Update states in which no roll is under way or waiting.
_QUIET = (pb.UpdateStatus.UNKNOWN, pb.UpdateStatus.COMPLETED, pb.UpdateStatus.ROLLBACK_COMPLETED)


class Reconciler:
    def __init__(self, store: Store, cache: Cache) -> None:
        self.store = store
        self.cache = cache
        self.orchestrator = Orchestrator(cache)
        self.scheduler = Scheduler(cache)
        self.ipam = IPAM(cache)
        self.passes = 0
        # Told of every pass that wrote its plan: (seconds, restarts by reason).
        self.on_pass: Callable[[float, dict[str, int]], None] | None = None
        self.busy_since = 0.0
        self._wakeups: list[tuple[int, str]] = []
        self._sub: Subscription | None = None
        self._waiting = False

    def idle(self) -> bool:
        """Waiting for news, none queued, no delayed restart due: every change the cache
        holds was acted on. Tests wait for this before checking that nothing more happens."""
        sub = self._sub
        return self._waiting and sub is not None and sub.queue.empty() and not self._wakeups

    async def run(self, fence: Fence) -> None:
        """Runs until cancelled (leadership lost) or a fenced write is refused."""
        with self.cache.subscribe() as sub:
            await self.cache.sync()
            retry = self._everything()
            backoff = REFUSED_BACKOFF_MIN_S
            self._sub = sub
            while True:
                # A first pass, or one to redo, goes at once; otherwise wait for news
                # or for the next task held back by a restart delay.
                if retry:
                    resync, changes = sub.drain()
                else:
                    self._waiting = True
                    try:
                        resync, changes = await self._next(sub)
                    finally:
                        self._waiting = False
                dirty = (
                    retry | self._due() | (self._everything() if resync else self._dirty(changes))
                )
                retry = set()
                try:
                    ok = await self.reconcile(dirty, fence)
                except Refused as err:
                    # etcd turned a write down (too large, say): this pass's work waits
                    # and is decided again, and leadership is not given up over it.
                    log.error("a reconcile write was refused: %s; again in %.0fs", err, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, REFUSED_BACKOFF_MAX_S)
                    retry = dirty
                    continue
                backoff = REFUSED_BACKOFF_MIN_S
                if not ok:
                    retry = dirty

    async def _next(self, sub: Subscription) -> tuple[bool, list[Change]]:
        if not self._wakeups:
            return await sub.next()
        delay = max(0.0, (self._wakeups[0][0] - now_ms()) / 1000)
        try:
            return await asyncio.wait_for(sub.next(), delay)
        except TimeoutError:
            return False, []

    def _due(self) -> set[str]:
        due = set()
        now = now_ms()
        while self._wakeups and self._wakeups[0][0] <= now:
            due.add(heapq.heappop(self._wakeups)[1])
        return due

    def _everything(self) -> set[str]:
        dirty = set(self.cache.ids(Kind.SERVICE))
        # Tasks of services that no longer exist must be cleaned up too.
        dirty.update(t.service_id for t in self.cache.list_objects(Kind.TASK))
        return dirty

    def _dirty(self, changes: Iterable[Change]) -> set[str]:
        dirty: set[str] = set()
        for change in changes:
            if change.kind == Kind.SERVICE:
                dirty.add(change.id)
            elif change.kind == Kind.TASK:
                task = change.obj or change.old
                if isinstance(task, pb.Task) and not self._progress_only(change):
                    dirty.add(task.service_id)
            elif change.kind == Kind.NODE:
                # Tasks on the node may have to move.
                dirty.update(t.service_id for t in self.cache.tasks_of_node(change.id))
                # Global services may need a task there; rebalancing ones may move some.
                dirty.update(
                    s.id
                    for s in self.cache.list_objects(Kind.SERVICE)
                    if s.spec.WhichOneof("mode") == "global" or self.orchestrator.rebalances(s)
                )
            elif change.kind == Kind.CLUSTER:
                dirty.update(self.cache.ids(Kind.SERVICE))
        return dirty

    def _progress_only(self, change: Change) -> bool:
        """An agent's report that its task got further on the way to running, which no
        orchestrator part acts on: the service is left alone (a pass over a service
        walks all its tasks, and reports come in hundreds of batches a second).

        Still looked at: anything but the status changing, a task that ended, a change
        of health, every report while the service updates or rolls back (the roll waits
        for tasks to run), and the report that has every task of a service running
        (rebalancing waits for that)."""
        old, new = change.old, change.obj
        if not isinstance(old, pb.Task) or not isinstance(new, pb.Task):
            return False
        if not (
            old.node_id
            and new.node_id == old.node_id
            and pb.ASSIGNED <= old.status.state <= new.status.state <= pb.RUNNING
            and new.desired_state == old.desired_state
            and new.spec_version == old.spec_version
            and new.slot == old.slot
            and new.status.health == old.status.health
        ):
            return False
        service: pb.Service | None = self.cache.get(Kind.SERVICE, new.service_id)
        if service is None or service.update_status.state not in _QUIET:
            return False
        tally = self.cache.tally(new.service_id)
        return not (new.status.state == pb.RUNNING and tally.running >= tally.desired)

    def _allocate(self, tasks: list[pb.Task]) -> None:
        """Overlay addresses for tasks in NEW; they move on to PENDING (or ASSIGNED)."""
        taken: dict[str, set[str]] = {}
        stamp = now_ms()
        for t in tasks:
            err = self.ipam.allocate(t, taken)
            if err:
                if t.status.err != err:
                    t.status.err = err
                    t.status.message = "pending address allocation"
                    t.status.timestamp_ms = stamp
                continue
            t.status.err = ""
            t.status.timestamp_ms = stamp
            if t.node_id:
                t.status.state = pb.ASSIGNED
                t.status.message = "scheduled"
            else:
                t.status.state = pb.PENDING
                t.status.message = "pending task scheduling"

    def stuck_for_s(self) -> float:
        """How long the pass in progress has been running (0 when idle)."""
        return time.monotonic() - self.busy_since if self.busy_since else 0.0

    async def reconcile(self, service_ids: set[str], fence: Fence) -> bool:
        """One pass; False if some write conflicted and the pass should be redone."""
        self.busy_since = time.monotonic()
        try:
            return await self._reconcile(service_ids, fence)
        finally:
            self.busy_since = 0.0

    async def _reconcile(self, service_ids: set[str], fence: Fence) -> bool:
        self.passes += 1
        started = time.perf_counter()
        plan = Plan()
        self.orchestrator.reconcile(service_ids, plan)
        for wakeup in plan.wakeups:
            heapq.heappush(self._wakeups, wakeup)
        # Tasks already stored that wait for addresses or a node: work on copies
        # (cache objects are shared) and write the ones that changed.
        originals = {
            t.id: t
            for t in (*self.cache.unallocated_tasks(), *self.cache.unassigned_tasks())
            if t.id not in plan.touched
        }
        copies = {}
        for task_id, t in originals.items():
            c = pb.Task()
            c.CopyFrom(t)
            copies[task_id] = c
        self._allocate([t for t in (*plan.created, *copies.values()) if t.status.state == pb.NEW])
        self.scheduler.schedule(
            t
            for t in (*plan.created, *copies.values())
            if t.status.state == pb.PENDING and not t.node_id
        )
        for task_id, c in copies.items():
            if c != originals[task_id]:
                plan.ops.append(Update(c, originals[task_id]))
        if not plan.ops:
            if self.on_pass is not None:
                self.on_pass(time.perf_counter() - started, plan.restarts)
            return True
        conflicts, revision = await self.store.batch_chunked(write_order(plan.ops), fence)
        if conflicts:
            log.info("%d write batch(es) conflicted; deciding again", conflicts)
            revision = await self.store.revision()
        await self.cache.wait_for(revision)
        if conflicts == 0 and self.on_pass is not None:
            self.on_pass(time.perf_counter() - started, plan.restarts)
        return conflicts == 0
