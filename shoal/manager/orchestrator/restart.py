"""Restart policy: one live task per slot (or per node of a global service),
replaced when its node fails, restarted per policy with backoff when it ends."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shoal.clock import now_ms
from shoal.manager.orchestrator.plan import Plan, shut_down
from shoal.manager.orchestrator.tasks import node_usable
from shoal.manager.orchestrator.update import start_first_handover
from shoal.manager.scheduler import is_live
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb

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


class Supervisor:
    """Keeps each slot at one live task; the replicated and global orchestrators
    hand it a slot's tasks and a way to make the slot's next task."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def reconcile_slot(
        self,
        service: pb.Service,
        slot_tasks: list[pb.Task],
        plan: Plan,
        make: Callable[[], pb.Task],
        stopping: Sequence[pb.Task] = (),
    ) -> None:
        """One slot (or one node of a global service): one live task, restarted per policy.
        `stopping`: the slot's tasks told to shut down that still run; a held task (a
        stop-first update's replacement, a delayed restart) starts once they stopped."""
        live = [t for t in slot_tasks if is_live(t)]
        dead = [t for t in slot_tasks if not is_live(t)]
        if live:
            for t in dead:
                shut_down(t, plan, "")
            if start_first_handover(service, live, plan):
                return
            live.sort(key=lambda t: (t.status.state, t.meta.created_at_ms), reverse=True)
            keep, extras = live[0], live[1:]
            for extra in extras:
                shut_down(extra, plan, "duplicate task in slot")
            if not self._healthy(keep, plan):
                # The node failed, not the task: replace at once, same attempt count.
                replacement = make()
                replacement.attempt = keep.attempt
                plan.create(replacement)
                plan.restarted("node")
            elif keep.desired_state == pb.READY:
                self._release(keep, plan, stopping)
            return
        last = max(dead, key=lambda t: (t.status.timestamp_ms, t.meta.created_at_ms))
        decision = restart_decision(service.spec.task.restart, last)
        if decision is None:
            return  # the slot has ended for good: its last task stays as the record
        for t in dead:
            shut_down(t, plan, "")
        attempt, start_after = decision
        plan.restarted(pb.TaskState.Name(last.status.state).lower())
        replacement = make()
        replacement.attempt = attempt
        if start_after > now_ms():
            replacement.desired_state = pb.READY
            replacement.start_after_ms = start_after
            plan.wake_at(start_after, service.id)
        plan.create(replacement)

    def _release(self, t: pb.Task, plan: Plan, stopping: Sequence[pb.Task]) -> None:
        """Lets a held task run once its restart delay has passed and the tasks it
        replaces stopped (their reports of it make the next pass; one on a node that
        is down or gone is not waited for)."""
        if t.id in plan.touched:
            return
        if any(self._on_live_node(o) for o in stopping):
            return
        if t.start_after_ms > now_ms():
            plan.wake_at(t.start_after_ms, t.service_id)
            return
        updated = pb.Task()
        updated.CopyFrom(t)
        updated.desired_state = pb.RUNNING
        plan.update(updated, t)

    def _on_live_node(self, t: pb.Task) -> bool:
        node: pb.Node | None = self.cache.get(Kind.NODE, t.node_id) if t.node_id else None
        return node is not None and node.status.state == pb.NODE_READY

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
        shut_down(t, plan, reason)
        return False
