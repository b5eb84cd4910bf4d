"""The healthy-count timeline used by the rolling-update tests (pure: no daemons)."""

from __future__ import annotations

from shoal.proto import objects_pb2 as pb

from .timeline import Timeline


def task(task_id: str, at_ms: int, healthy: bool) -> pb.Task:
    t = pb.Task(id=task_id)
    t.status.timestamp_ms = at_ms
    t.status.state = pb.RUNNING if healthy else pb.SHUTDOWN
    t.status.health = pb.HEALTH_HEALTHY if healthy else pb.HEALTH_NONE
    return t


def test_a_dip_between_two_looks_is_counted() -> None:
    """Looks at t=0 and t=100 both see two healthy tasks; a sampler would say "never
    fewer than 2". The records say b stopped at 40 and c was healthy only from 60."""
    tl = Timeline()
    tl.observe([task("a", 0, True), task("b", 0, True)])
    tl.observe([task("a", 0, True), task("b", 40, False), task("c", 60, True)])
    assert tl.fewest(10, 100) == 1
    assert tl.fewest(61, 100) == 2  # after the dip
    assert tl.fewest(10, 39) == 2  # before it


def test_handover_in_the_same_millisecond_is_no_dip_and_bounds_are_inclusive() -> None:
    tl = Timeline()
    tl.observe([task("a", 0, True), task("b", 0, True)])
    tl.observe([task("a", 50, False), task("c", 50, True), task("b", 0, True)])
    assert tl.fewest(10, 100) == 2
    tl.observe([task("b", 100, False)])
    assert tl.fewest(10, 100) == 1
    assert tl.fewest(10, 99) == 2


def test_a_task_never_seen_healthy_does_not_count() -> None:
    tl = Timeline()
    tl.observe([task("a", 0, True), task("x", 5, False)])
    assert tl.fewest(10, 20) == 1
