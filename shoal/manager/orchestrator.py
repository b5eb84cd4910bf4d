"""Orchestrators: from each service's desired state to the set of tasks it needs.

Replicated services get one live task per slot 1..replicas; global services get
one live task per eligible node. Decisions are made from the cache alone and
come back as store operations, so running a pass twice, or after a restart
half-way through, converges to the same tasks.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.manager import constraints
from shoal.manager.dependencies import RECHECK_MS, waiting_on
from shoal.manager.ids import new_id
from shoal.manager.scheduler import is_live
from shoal.manager.store import Cache, Create, Delete, Kind, Op, Update
from shoal.manager.store.kinds import now_ms
from shoal.proto import objects_pb2 as pb

# Task states in which nothing runs on a node yet: such a task can simply be deleted.
_NOT_STARTED = pb.ASSIGNED


@dataclass
class Plan:
    """What one pass decided: store operations, and new tasks still to be scheduled."""

    ops: list[Op] = field(default_factory=list)
    # Ids of tasks the plan writes, so the scheduler does not write them again.
    touched: set[str] = field(default_factory=set)
    created: list[pb.Task] = field(default_factory=list)

    # (time in ms, service id): passes to run then, for tasks held by a restart delay.
    wakeups: list[tuple[int, str]] = field(default_factory=list)

    def wake_at(self, at_ms: int, service_id: str) -> None:
        self.wakeups.append((at_ms, service_id))

    def create(self, task: pb.Task) -> None:
        self.ops.append(Create(task))
        self.touched.add(task.id)
        self.created.append(task)

    def update(self, task: pb.Task, previous: pb.Task) -> None:
        self.ops.append(Update(task, previous))
        self.touched.add(task.id)

    def delete(self, task: pb.Task) -> None:
        self.ops.append(Delete(task))
        self.touched.add(task.id)


def new_task(service: pb.Service, slot: int, node_id: str = "") -> pb.Task:
    t = pb.Task(
        id=new_id(),
        service_id=service.id,
        service_name=service.spec.annotations.name,
        slot=slot,
        node_id=node_id,
        desired_state=pb.RUNNING,
        spec_version=service.spec_version,
    )
    t.spec.CopyFrom(service.spec.task)
    t.status.timestamp_ms = now_ms()
    if t.spec.networks:
        t.status.state = pb.NEW
        t.status.message = "allocating"
    elif node_id:
        t.status.state = pb.ASSIGNED
        t.status.message = "scheduled"
    else:
        t.status.state = pb.PENDING
        t.status.message = "pending task scheduling"
    return t


def is_current(t: pb.Task, service: pb.Service) -> bool:
    """True if the task runs the service's current task spec. A rollback makes a new
    spec_version whose spec equals an older one; tasks of that older spec stay."""
    return t.spec_version == service.spec_version or t.spec == service.spec.task


def without_addresses(t: pb.Task) -> None:
    """Frees a dead task's overlay addresses (its claims go with them)."""
    for a in t.networks:
        del a.addresses[:]


# Backoff of a crash-looping slot: the first restart is immediate, then 250ms,
# 500ms, ... doubling up to the policy's delay (Swarm always waits the full delay).
BACKOFF_BASE_MS = 250


def restart_decision(policy: pb.RestartPolicy, last: pb.Task) -> tuple[int, int] | None:
    """Whether a slot whose task ended gets a new one: (attempt, start after ms) or None."""
    failed = last.status.state in (pb.FAILED, pb.REJECTED, pb.ORPHANED)
    if policy.condition == pb.RestartPolicy.NONE:
        return None
    if policy.condition == pb.RestartPolicy.ON_FAILURE and not failed:
        return None
    ended = last.status.timestamp_ms or now_ms()
    lived = ended - (last.meta.created_at_ms or ended)
    # Within the window restarts add up; a task that lived longer starts the count anew.
    attempt = 1 if policy.window_ms and lived > policy.window_ms else last.attempt + 1
    if policy.max_attempts and attempt > policy.max_attempts:
        return None
    delay = 0 if attempt <= 1 else min(policy.delay_ms, BACKOFF_BASE_MS * 2 ** (attempt - 2))
    return attempt, ended + delay


def ready_for_update(t: pb.Task) -> bool:
    """Running, and healthy if it has a health check: a rolling update may move on."""
    if t.status.state != pb.RUNNING:
        return False
    return t.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)


def update_config(service: pb.Service) -> pb.UpdateConfig:
    """What the current roll follows: while rolling back, the rollback config of the spec
    being rolled back from (compose's rollback_config), if it has one."""
    rolling_back = service.update_status.state in (
        pb.UpdateStatus.ROLLBACK_STARTED,
        pb.UpdateStatus.ROLLBACK_PAUSED,
    )
    if rolling_back and service.previous_spec.HasField("rollback"):
        return service.previous_spec.rollback
    return service.spec.update


def node_usable(node: pb.Node | None) -> bool:
    """Whether a node may keep running its tasks (drain and down move them)."""
    return (
        node is not None
        and node.status.state == pb.NODE_READY
        and node.spec.availability != pb.AVAILABILITY_DRAIN
    )


class Orchestrator:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def reconcile(self, service_ids: set[str], plan: Plan) -> None:
        for service_id in service_ids:
            service: pb.Service | None = self.cache.get(Kind.SERVICE, service_id)
            tasks = self.cache.tasks_of_service(service_id)
            if service is None:
                self._remove_tasks(tasks, plan)
            elif waiting_on(self.cache, service, tasks):
                plan.wake_at(now_ms() + RECHECK_MS, service_id)
            elif service.spec.WhichOneof("mode") == "global":
                self._reconcile_global(service, tasks, plan)
            else:
                self._reconcile_replicated(service, tasks, plan)
            if service is not None:
                self._reap_history(tasks, plan)

    # ------------------------------------------------------------ replicated

    def _reconcile_replicated(self, service: pb.Service, tasks: list[pb.Task], plan: Plan) -> None:
        replicas = service.spec.replicated.replicas
        by_slot: dict[int, list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.desired_state <= pb.RUNNING:
                by_slot[t.slot].append(t)

        for slot, slot_tasks in by_slot.items():
            if slot > replicas:
                for t in slot_tasks:
                    self._shut_down(t, plan, "scaled down")
                continue
            self._reconcile_slot(
                service, slot_tasks, plan, functools.partial(new_task, service, slot)
            )

        for slot in range(1, replicas + 1):
            if slot not in by_slot:
                plan.create(new_task(service, slot))

        self._roll(service, by_slot, plan)
        if self.rebalances(service):
            self._rebalance(service, by_slot, plan)

    def rebalances(self, service: pb.Service) -> bool:
        if service.spec.WhichOneof("mode") == "global":
            return False
        clusters = self.cache.list_objects(Kind.CLUSTER)
        return service.spec.rebalance or bool(clusters and clusters[0].spec.orchestration.rebalance)

    def _rebalance(
        self, service: pb.Service, by_slot: dict[int, list[pb.Task]], plan: Plan
    ) -> None:
        """Spreads a settled service evenly again over the nodes that may run it (one
        joined, or came back from down, drain or pause): tasks move from the fullest
        nodes to the emptiest, `update.parallelism` at a time, stop-first."""
        if service.update_status.state in (
            pb.UpdateStatus.UPDATING,
            pb.UpdateStatus.ROLLBACK_STARTED,
        ):
            return
        live = [t for ts in by_slot.values() for t in ts if is_live(t)]
        if len(live) != service.spec.replicated.replicas or any(
            t.id in plan.touched or t.status.state != pb.RUNNING or not is_current(t, service)
            for t in live
        ):
            return  # something is starting, moving or updating: wait until it settles
        wanted = constraints.parse_all(list(service.spec.task.placement.constraints))
        counts: dict[str, int] = {}
        for node in self.cache.list_objects(Kind.NODE):
            if (
                node.status.state == pb.NODE_READY
                and node.spec.availability == pb.AVAILABILITY_ACTIVE
                and all(c.matches(node) for c in wanted)
            ):
                counts[node.id] = 0
        on_node: dict[str, list[pb.Task]] = defaultdict(list)
        for t in live:
            if t.node_id in counts:
                counts[t.node_id] += 1
                on_node[t.node_id].append(t)
        limit = service.spec.task.placement.max_replicas_per_node or len(live)
        parallelism = service.spec.update.parallelism or len(live)
        for _ in range(parallelism):
            if not on_node:
                return
            fullest = max(on_node, key=lambda n: (counts[n], n))
            emptiest = min(counts, key=lambda n: (counts[n], n))
            if counts[fullest] - counts[emptiest] <= 1 or counts[emptiest] >= limit:
                return
            moved = max(on_node[fullest], key=lambda t: t.slot)
            on_node[fullest].remove(moved)
            if not on_node[fullest]:
                del on_node[fullest]
            counts[fullest] -= 1
            counts[emptiest] += 1
            self._shut_down(moved, plan, "rebalancing")
            # Unassigned: the scheduler spreads it, which picks the emptiest node.
            plan.create(new_task(service, int(moved.slot)))

    def _reconcile_slot(
        self,
        service: pb.Service,
        slot_tasks: list[pb.Task],
        plan: Plan,
        make: Callable[[], pb.Task],
    ) -> None:
        """One slot (or one node of a global service): one live task, restarted per policy."""
        live = [t for t in slot_tasks if is_live(t)]
        dead = [t for t in slot_tasks if not is_live(t)]
        if live:
            for t in dead:
                self._shut_down(t, plan, "")
            if self._start_first_handover(service, live, plan):
                return
            live.sort(key=lambda t: (t.status.state, t.meta.created_at_ms), reverse=True)
            keep, extras = live[0], live[1:]
            for extra in extras:
                self._shut_down(extra, plan, "duplicate task in slot")
            if not self._healthy(keep, plan):
                # The node failed, not the task: replace at once, same attempt count.
                replacement = make()
                replacement.attempt = keep.attempt
                plan.create(replacement)
            elif keep.desired_state == pb.READY:
                self._release(keep, plan)
            return
        last = max(dead, key=lambda t: (t.status.timestamp_ms, t.meta.created_at_ms))
        decision = restart_decision(service.spec.task.restart, last)
        if decision is None:
            return  # the slot has ended for good: its last task stays as the record
        for t in dead:
            self._shut_down(t, plan, "")
        attempt, start_after = decision
        replacement = make()
        replacement.attempt = attempt
        if start_after > now_ms():
            replacement.desired_state = pb.READY
            replacement.start_after_ms = start_after
            plan.wake_at(start_after, service.id)
        plan.create(replacement)

    def _start_first_handover(self, service: pb.Service, live: list[pb.Task], plan: Plan) -> bool:
        """start-first updates: an old task and its replacement share the slot until the
        replacement is ready (running, healthy if checked); then the old one stops."""
        if update_config(service).order != pb.UpdateConfig.START_FIRST:
            return False
        current = [t for t in live if is_current(t, service)]
        old = [t for t in live if not is_current(t, service)]
        if not current or not old:
            return False
        newest = max(current, key=lambda t: t.meta.created_at_ms)
        for t in current:
            if t is not newest:
                self._shut_down(t, plan, "duplicate task in slot")
        if ready_for_update(newest):
            for t in old:
                self._shut_down(t, plan, "replaced by an updated task")
        else:
            old.sort(key=lambda t: (t.status.state, t.meta.created_at_ms), reverse=True)
            for t in old[1:]:
                self._shut_down(t, plan, "duplicate task in slot")
        return True

    def _release(self, t: pb.Task, plan: Plan) -> None:
        """Lets a task held back by the restart delay run once the delay has passed."""
        if t.id in plan.touched:
            return
        if t.start_after_ms > now_ms():
            plan.wake_at(t.start_after_ms, t.service_id)
            return
        updated = pb.Task()
        updated.CopyFrom(t)
        updated.desired_state = pb.RUNNING
        plan.update(updated, t)

    def _healthy(self, t: pb.Task, plan: Plan) -> bool:
        """False (and the task is shut down) if its node can no longer run it."""
        if not t.node_id:
            return True
        node: pb.Node | None = self.cache.get(Kind.NODE, t.node_id)
        if node_usable(node):
            return True
        reason = (
            "node drained"
            if node is not None and node.status.state == pb.NODE_READY
            else ("node down" if node is not None else "node removed")
        )
        self._shut_down(t, plan, reason)
        return False

    def _roll(self, service: pb.Service, by_slot: dict[int, list[pb.Task]], plan: Plan) -> None:
        """A rolling update: tasks of an older spec are replaced `parallelism` at a time
        (stop-first), `delay` apart; a failed new task pauses, or rolls back, the update."""
        status = service.update_status
        outdated: list[pb.Task] = []
        in_flight = 0
        last_running = 0
        for slot, slot_tasks in by_slot.items():
            if slot > service.spec.replicated.replicas:
                continue
            for t in slot_tasks:
                if t.id in plan.touched or not is_live(t):
                    continue
                if not is_current(t, service):
                    outdated.append(t)
                elif not ready_for_update(t):
                    in_flight += 1
                else:
                    last_running = max(last_running, int(t.status.timestamp_ms))
        if status.state in (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED):
            failed = next(
                (
                    t
                    for t in self.cache.tasks_of_service(service.id)
                    if is_current(t, service)
                    and t.status.state in (pb.FAILED, pb.REJECTED)
                    and t.meta.created_at_ms >= status.started_at_ms
                ),
                None,
            )
            if failed is not None and self._on_update_failure(service, failed, plan):
                return
            if not outdated and in_flight == 0:
                done = pb.Service()
                done.CopyFrom(service)
                done.update_status.state = (
                    pb.UpdateStatus.COMPLETED
                    if status.state == pb.UpdateStatus.UPDATING
                    else pb.UpdateStatus.ROLLBACK_COMPLETED
                )
                done.update_status.completed_at_ms = now_ms()
                plan.ops.append(Update(done))
                return
        if not outdated or status.state in (
            pb.UpdateStatus.PAUSED,
            pb.UpdateStatus.ROLLBACK_PAUSED,
        ):
            return
        config = update_config(service)
        delay = config.delay_ms
        if delay and in_flight == 0 and last_running and now_ms() < last_running + delay:
            plan.wake_at(last_running + delay, service.id)
            return
        parallelism = config.parallelism
        budget = len(outdated) if parallelism == 0 else max(0, parallelism - in_flight)
        start_first = config.order == pb.UpdateConfig.START_FIRST
        if start_first:
            # A slot whose replacement already started is handed over, not updated again.
            started = {
                t.slot
                for ts in by_slot.values()
                for t in ts
                if is_current(t, service) and is_live(t)
            }
            outdated = [t for t in outdated if t.slot not in started]
            budget = len(outdated) if parallelism == 0 else max(0, parallelism - in_flight)
        outdated.sort(key=lambda t: t.slot)
        for t in outdated[:budget]:
            if not start_first:
                self._shut_down(t, plan, "updating to a new spec")
            plan.create(new_task(service, int(t.slot)))

    def _on_update_failure(self, service: pb.Service, failed: pb.Task, plan: Plan) -> bool:
        """Applies the update's failure action; True if the update stops here."""
        action = update_config(service).failure_action
        if action == pb.UpdateConfig.CONTINUE:
            return False
        updated = pb.Service()
        updated.CopyFrom(service)
        reason = f"task {failed.id[:12]} failed: {failed.status.err or 'exited'}"
        rolling_back = service.update_status.state == pb.UpdateStatus.ROLLBACK_STARTED
        if (
            action == pb.UpdateConfig.ROLLBACK
            and not rolling_back
            and (service.HasField("previous_spec"))
        ):
            updated.spec.CopyFrom(service.previous_spec)
            updated.previous_spec.CopyFrom(service.spec)
            updated.spec_version = service.spec_version + 1
            updated.update_status.CopyFrom(
                pb.UpdateStatus(
                    state=pb.UpdateStatus.ROLLBACK_STARTED,
                    started_at_ms=now_ms(),
                    message=f"update rolled back: {reason}",
                )
            )
        else:
            updated.update_status.state = (
                pb.UpdateStatus.ROLLBACK_PAUSED if rolling_back else pb.UpdateStatus.PAUSED
            )
            updated.update_status.message = f"update paused: {reason}"
        plan.ops.append(Update(updated))
        return True

    # ------------------------------------------------------------ global

    def _reconcile_global(self, service: pb.Service, tasks: list[pb.Task], plan: Plan) -> None:
        wanted = constraints.parse_all(list(service.spec.task.placement.constraints))
        eligible = {
            n.id
            for n in self.cache.list_objects(Kind.NODE)
            if n.status.state == pb.NODE_READY
            and n.spec.availability == pb.AVAILABILITY_ACTIVE
            and all(c.matches(n) for c in wanted)
        }
        on_node: dict[str, list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.desired_state <= pb.RUNNING:
                on_node[t.node_id].append(t)
        for node_id, node_tasks in on_node.items():
            node: pb.Node | None = self.cache.get(Kind.NODE, node_id)
            # A paused node keeps what it runs; drained, down or ineligible ones do not.
            keeps = node is not None and node.spec.availability == pb.AVAILABILITY_PAUSE
            if not node_usable(node) or (node_id not in eligible and not keeps):
                for t in node_tasks:
                    self._shut_down(t, plan, "node no longer eligible")
                continue
            self._reconcile_slot(
                service, node_tasks, plan, functools.partial(new_task, service, 0, node_id)
            )
            for t in node_tasks:
                if t.id not in plan.touched and is_live(t) and not is_current(t, service):
                    self._shut_down(t, plan, "updating to a new spec")
                    plan.create(new_task(service, 0, node_id))
        for node_id in eligible - on_node.keys():
            plan.create(new_task(service, 0, node_id))

    # ------------------------------------------------------------ removal

    def _shut_down(self, t: pb.Task, plan: Plan, reason: str) -> None:
        if t.id in plan.touched:
            return
        if t.status.state < _NOT_STARTED:
            # Never scheduled: nothing runs it, so the record just goes.
            plan.delete(t)
            return
        updated = pb.Task()
        updated.CopyFrom(t)
        updated.desired_state = pb.SHUTDOWN
        if reason:
            updated.status.message = reason
        if t.status.state > pb.RUNNING:
            without_addresses(updated)
        plan.update(updated, t)

    def _node_alive(self, t: pb.Task) -> bool:
        node: pb.Node | None = self.cache.get(Kind.NODE, t.node_id) if t.node_id else None
        return node is not None and node.status.state == pb.NODE_READY

    def _remove_tasks(self, tasks: list[pb.Task], plan: Plan) -> None:
        """The service is gone: stop what runs, delete what does not."""
        for t in tasks:
            if t.id in plan.touched:
                continue
            finished = t.status.state > pb.RUNNING or t.status.state < _NOT_STARTED
            if finished or not self._node_alive(t):
                plan.delete(t)
            elif t.desired_state != pb.REMOVE:
                updated = pb.Task()
                updated.CopyFrom(t)
                updated.desired_state = pb.REMOVE
                updated.status.message = "service removed"
                plan.update(updated, t)

    def _reap_history(self, tasks: list[pb.Task], plan: Plan) -> None:
        """Keeps the newest `task_history_limit` dead tasks per slot (per node for global)."""
        limit = self._history_limit()
        dead: dict[tuple[int, str], list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.id in plan.touched or t.desired_state <= pb.RUNNING:
                continue
            if t.status.state > pb.RUNNING or not self._node_alive(t):
                dead[(int(t.slot), t.node_id if t.slot == 0 else "")].append(t)
        for group in dead.values():
            group.sort(key=lambda t: t.meta.updated_at_ms, reverse=True)
            for t in group[limit:]:
                plan.delete(t)
            for t in group[:limit]:
                if t.status.state > pb.RUNNING and any(a.addresses for a in t.networks):
                    freed = pb.Task()
                    freed.CopyFrom(t)
                    without_addresses(freed)
                    plan.update(freed, t)

    def _history_limit(self) -> int:
        clusters = self.cache.list_objects(Kind.CLUSTER)
        if clusters:
            return int(clusters[0].spec.orchestration.task_history_limit)
        return 5
