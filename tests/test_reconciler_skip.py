"""Which task changes make the reconciler look at a service again. Agents' progress
reports (ASSIGNED -> ... -> RUNNING, nothing else changed) come in hundreds of batches
a second and no orchestrator part acts on them: they are skipped, except while the
service updates or rolls back, and the report that makes all its tasks run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shoal.manager.reconciler import Reconciler
from shoal.manager.store import Kind
from shoal.manager.store.tally import ServiceTally
from shoal.manager.store.watch import Change
from shoal.proto import objects_pb2 as pb


@dataclass
class _Cache:
    """What _dirty reads of the cache: the service and its tally."""

    service: pb.Service
    counts: ServiceTally

    def get(self, kind: Kind, obj_id: str) -> pb.Service | None:
        return self.service if kind == Kind.SERVICE and obj_id == self.service.id else None

    def tally(self, service_id: str) -> ServiceTally:
        assert service_id == self.service.id
        return self.counts


def reconciler(update: pb.UpdateStatus.State.ValueType, running: int) -> Reconciler:
    service = pb.Service(id="s1", spec_version=2)
    service.update_status.state = update
    r = Reconciler.__new__(Reconciler)  # only its decision, on a cache of one service
    r.cache = _Cache(service, ServiceTally(desired=3, running=running))  # type: ignore[assignment]
    return r


def task(state: pb.TaskState.ValueType, **fields: object) -> pb.Task:
    t = pb.Task(
        id="t1", service_id="s1", node_id="n1", slot=1, spec_version=2,
        desired_state=pb.RUNNING,
    )  # fmt: skip
    t.status.state = state
    for name, value in fields.items():
        setattr(t, name, value)
    return t


def change(old: pb.Task, new: pb.Task) -> Change:
    return Change(Kind.TASK, new.id, new, old)


QUIET = pb.UpdateStatus.COMPLETED


@pytest.mark.parametrize(
    ("old", "new", "update", "running", "looked_at"),
    [
        # Progress on the way to running, others still to come: skipped.
        (task(pb.ASSIGNED), task(pb.STARTING), QUIET, 1, False),
        (task(pb.STARTING), task(pb.RUNNING), QUIET, 2, False),
        # The report that has every task running (rebalancing waits for it).
        (task(pb.STARTING), task(pb.RUNNING), QUIET, 3, True),
        # While the service updates or rolls back, every report counts.
        (task(pb.ASSIGNED), task(pb.STARTING), pb.UpdateStatus.UPDATING, 1, True),
        (task(pb.ASSIGNED), task(pb.STARTING), pb.UpdateStatus.ROLLBACK_STARTED, 1, True),
        # A task that ended, or went backwards.
        (task(pb.RUNNING), task(pb.FAILED), QUIET, 1, True),
        (task(pb.RUNNING), task(pb.STARTING), QUIET, 1, True),
        # Anything but the status: its node, desired state, slot or spec version.
        (task(pb.ASSIGNED), task(pb.STARTING, node_id="n2"), QUIET, 1, True),
        (task(pb.ASSIGNED), task(pb.STARTING, desired_state=pb.SHUTDOWN), QUIET, 1, True),
        (task(pb.ASSIGNED), task(pb.STARTING, slot=2), QUIET, 1, True),
        (task(pb.ASSIGNED), task(pb.STARTING, spec_version=3), QUIET, 1, True),
        # A task not yet on a node (the scheduler's).
        (task(pb.PENDING, node_id=""), task(pb.ASSIGNED), QUIET, 1, True),
    ],
)
def test_which_task_changes_make_the_service_dirty(
    old: pb.Task, new: pb.Task, update: int, running: int, looked_at: bool
) -> None:
    r = reconciler(update, running)  # type: ignore[arg-type]
    assert r._dirty([change(old, new)]) == ({"s1"} if looked_at else set())


def test_a_change_of_health_is_looked_at() -> None:
    old, new = task(pb.RUNNING), task(pb.RUNNING)
    new.status.health = pb.HEALTH_UNHEALTHY
    assert reconciler(QUIET, 1)._dirty([change(old, new)]) == {"s1"}
