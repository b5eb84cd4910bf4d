"""The per-service figures the cache keeps as tasks change agree with a full count
over the service's tasks, after any sequence of writes and removals."""

from __future__ import annotations

import random

from shoal.manager.store.tally import Tallies, ready
from shoal.proto import objects_pb2 as pb

STATES = [pb.PENDING, pb.ASSIGNED, pb.PREPARING, pb.RUNNING, pb.FAILED, pb.REJECTED, pb.SHUTDOWN]
HEALTH = [pb.HEALTH_NONE, pb.HEALTH_HEALTHY, pb.HEALTH_UNHEALTHY]


def random_task(rng: random.Random, task_id: str) -> pb.Task:
    t = pb.Task(id=task_id, service_id=rng.choice(["s1", "s2"]), spec_version=rng.randint(1, 3))
    t.desired_state = rng.choice([pb.RUNNING, pb.READY, pb.SHUTDOWN])
    t.status.state = rng.choice(STATES)
    t.status.health = rng.choice(HEALTH)
    t.status.err = rng.choice(["", "", "no suitable node"])
    t.status.message = rng.choice(["", "pulling busybox: 3/7 layers"])
    return t


def recount(tasks: dict[str, pb.Task], service_id: str) -> tuple[int, int, dict[int, set[str]]]:
    desired = running = 0
    by_version: dict[int, set[str]] = {}
    for t in tasks.values():
        if t.service_id != service_id or t.desired_state != pb.RUNNING:
            continue
        desired += 1
        running += t.status.state == pb.RUNNING
        if ready(t):
            by_version.setdefault(t.spec_version, set()).add(t.id)
    return desired, running, by_version


def test_tallies_agree_with_a_full_count() -> None:
    rng = random.Random(14)
    tallies = Tallies()
    tasks: dict[str, pb.Task] = {}
    for step in range(5000):
        task_id = f"t{rng.randint(0, 60)}"
        old = tasks.pop(task_id, None)
        if old is not None:
            tallies.remove(old)
        if rng.random() < 0.8:
            tasks[task_id] = random_task(rng, task_id)
            tallies.put(tasks[task_id])
        for service_id in ("s1", "s2"):
            tally = tallies.get(service_id)
            desired, running, by_version = recount(tasks, service_id)
            assert (tally.desired, tally.running) == (desired, running), step
            assert {v: set(ts) for v, ts in tally.ready.items()} == by_version, step
            errored = {
                t.id
                for t in tasks.values()
                if t.service_id == service_id
                and t.status.err
                and (t.desired_state == pb.RUNNING or t.status.state in (pb.FAILED, pb.REJECTED))
            }
            assert set(tally.errored) == errored, step
            pulling = {
                t.id
                for t in tasks.values()
                if t.service_id == service_id
                and t.id not in errored
                and t.status.state == pb.PREPARING
                and t.status.message.startswith("pulling ")
            }
            assert set(tally.pulling) == pulling, step
    # Removing every task leaves nothing behind.
    for t in tasks.values():
        tallies.remove(t)
    assert tallies.get("s1").empty() and tallies.get("s2").empty()
    assert not tallies._by_service
