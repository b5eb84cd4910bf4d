"""A pass's decisions: the store operations it makes, and how a task is ended."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.manager.orchestrator.tasks import NOT_STARTED, without_addresses
from shoal.manager.store import Create, Delete, Op, Update, chunks
from shoal.proto import objects_pb2 as pb


@dataclass
class Plan:
    """What one pass decided: store operations, and new tasks still to be scheduled."""

    ops: list[Op] = field(default_factory=list)
    # Ids of tasks the plan writes, so the scheduler does not write them again.
    touched: set[str] = field(default_factory=set)
    created: list[pb.Task] = field(default_factory=list)

    # (time in ms, service id): passes to run then, for tasks held by a restart delay.
    wakeups: list[tuple[int, str]] = field(default_factory=list)
    # Replacements of failed or stranded tasks, by reason (metrics).
    restarts: dict[str, int] = field(default_factory=dict)

    def restarted(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1

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


def write_order(ops: list[Op]) -> list[Op]:
    """A pass's writes with the tasks it places on nodes (new ones, pending ones
    scheduled now) last, grouped by node. The writes go in chunks, and each chunk
    reaches the agents as it is written: grouped, a node gets all its new tasks of
    the pass in one assignment message (and reports them running in one), instead
    of one each per service when a pass creates several services' tasks (a burst
    of creates gathers into one pass while the previous one writes). Nothing is
    held back: a pass with one service's tasks is written as fast as before.

    Only where that changes no outcome: when the pass fits one transaction (all
    of it lands at once), or when it only places tasks. A larger pass that also
    ends tasks keeps its order, so a replacement's shutdown and its new task stay
    side by side and do not land transactions apart (a service briefly short of
    replicas, or over if the later chunk conflicts)."""

    def placed(op: Op) -> bool:
        task = op.obj
        if not isinstance(task, pb.Task) or not task.node_id:
            return False
        if isinstance(op, Create):
            return True
        return (
            isinstance(op, Update) and isinstance(op.previous, pb.Task) and not op.previous.node_id
        )

    placements = [op for op in ops if placed(op)]
    if len(placements) < 2:
        return ops
    rest = [op for op in ops if not placed(op)]
    if rest and len(chunks(ops)) > 1:
        return ops
    placements.sort(key=lambda op: op.obj.node_id)  # type: ignore[union-attr]
    return rest + placements


def shut_down(t: pb.Task, plan: Plan, reason: str) -> None:
    """Ends a task: a never-scheduled one is deleted, any other told to shut down."""
    if t.id in plan.touched:
        return
    if t.status.state < NOT_STARTED:
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
