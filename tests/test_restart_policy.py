"""The restart policy's decisions (pure: no etcd)."""

from __future__ import annotations

from shoal.manager.orchestrator.restart import restart_decision
from shoal.proto import objects_pb2 as pb


def ended(state: pb.TaskState.ValueType, attempt: int = 0, lived_ms: int = 100) -> pb.Task:
    t = pb.Task(attempt=attempt)
    t.meta.created_at_ms = 1_000_000
    t.status.state = state
    t.status.timestamp_ms = 1_000_000 + lived_ms
    return t


def policy(
    condition: int = pb.RestartPolicy.ANY,
    delay_ms: int = 5000,
    max_attempts: int = 0,
    window_ms: int = 0,
) -> pb.RestartPolicy:
    return pb.RestartPolicy(
        condition=condition,
        delay_ms=delay_ms,  # type: ignore[arg-type]
        max_attempts=max_attempts,
        window_ms=window_ms,
    )


def test_first_restart_is_immediate_then_backs_off_to_the_delay() -> None:
    decisions = [restart_decision(policy(), ended(pb.FAILED, attempt=a)) for a in range(8)]
    assert [d[0] for d in decisions if d] == [1, 2, 3, 4, 5, 6, 7, 8]
    delays = [d[1] - 1_000_100 for d in decisions if d]
    assert delays == [0, 250, 500, 1000, 2000, 4000, 5000, 5000]


def test_conditions() -> None:
    assert restart_decision(policy(pb.RestartPolicy.NONE), ended(pb.FAILED)) is None
    assert restart_decision(policy(pb.RestartPolicy.ON_FAILURE), ended(pb.COMPLETE)) is None
    assert restart_decision(policy(pb.RestartPolicy.ON_FAILURE), ended(pb.REJECTED)) is not None
    assert restart_decision(policy(pb.RestartPolicy.ANY), ended(pb.COMPLETE)) is not None


def test_max_attempts_and_window() -> None:
    assert restart_decision(policy(max_attempts=3), ended(pb.FAILED, attempt=2)) is not None
    assert restart_decision(policy(max_attempts=3), ended(pb.FAILED, attempt=3)) is None
    # A task that lived longer than the window starts the count anew.
    again = restart_decision(
        policy(max_attempts=3, window_ms=1000), ended(pb.FAILED, attempt=3, lived_ms=5000)
    )
    assert again is not None and again[0] == 1
