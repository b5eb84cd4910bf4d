"""The terminal progress bar of service create|update|scale."""

from __future__ import annotations

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.progress import bar, progress_line, update_batch


def info(running: int, updated: int, state: int = 0, parallelism: int = 0) -> api.ServiceInfo:
    svc = pb.Service()
    svc.spec.annotations.name = "web"
    svc.spec.replicated.replicas = 6
    svc.spec.update.parallelism = parallelism
    svc.update_status.state = state  # type: ignore[assignment]
    return api.ServiceInfo(service=svc, desired=6, running=running, running_updated=updated)


def test_bar() -> None:
    assert bar(0, 4, 8) == "[--------]"
    assert bar(2, 4, 8) == "[####----]"
    assert bar(9, 4, 8) == "[########]"
    assert bar(0, 0, 4) == "[####]"


def test_line_without_update() -> None:
    line = progress_line("web", info(3, 3), 6, 200)
    assert line == "web [############------------] 3/6 running"
    assert progress_line("web", info(3, 3), 6, 10) == line[:10]


def test_update_batches() -> None:
    updating = pb.UpdateStatus.UPDATING
    assert update_batch(info(6, 0, updating, 2), 6) == (1, 3)
    assert update_batch(info(6, 2, updating, 2), 6) == (2, 3)
    assert update_batch(info(6, 5, updating, 2), 6) == (3, 3)
    assert update_batch(info(6, 6, updating, 2), 6) == (3, 3)
    assert update_batch(info(6, 0, updating, 0), 6) == (1, 1)  # all at once
    assert update_batch(info(6, 6, pb.UpdateStatus.COMPLETED, 2), 6) is None
    line = progress_line("web", info(6, 2, updating, 2), 6, 200)
    assert line.endswith("6/6 running, update batch 2 of 3")
    rollback = progress_line("web", info(6, 0, pb.UpdateStatus.ROLLBACK_STARTED, 3), 6, 200)
    assert rollback.endswith("rollback batch 1 of 2")
