"""Rolling updates with the simulated runtime: delay, pause on failure, health, order.

How many tasks stayed healthy is computed from the tasks' report timestamps
(tests/timeline.py), not sampled, so a dip between two watch events counts too.
(Rollback of a broken image runs with real containers in tests/test_selfheal.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .test_agents_simulated import cluster, control, start_workers
from .timeline import Timeline, now_ms

pytestmark = pytest.mark.integration
__all__ = ["cluster"]  # the fixture, shared with tests/test_agents_simulated.py


def create(m: ManagerProcess, replicas: int, *flags: str) -> None:
    r = m.ctl(
        "service", "create", "--name", "web", "--image", "busybox:1",
        "--replicas", str(replicas), *flags,
    )  # fmt: skip
    assert r.code == 0, r.err


def live(m: ManagerProcess) -> list[pb.Task]:
    tasks = control(m).ListTasks(api.ListTasksRequest(service_ref="web")).tasks
    return [t for t in tasks if t.desired_state == pb.RUNNING]


def update_watched(m: ManagerProcess, replicas: int) -> tuple[Timeline, int, int]:
    """`service update web --image busybox:2` while every change of the service's tasks
    is fed to a Timeline; returns it with the update's start and end (ms)."""
    c = control(m)
    timeline = Timeline()
    timeline.observe(c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks)
    stream = c.WatchService(api.WatchServiceRequest(ref="web"), timeout=60)
    started = now_ms()
    update = subprocess.Popen(
        [
            sys.executable, "-m", "shoal.swarmctl", "--socket", str(m.socket),
            "service", "update", "web", "--image", "busybox:2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    for progress in stream:
        timeline.observe(c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks)
        info = progress.service
        if info.running_updated == replicas and info.desired == replicas:
            stream.cancel()
            break
    assert update.wait(timeout=60) == 0, update.stderr.read() if update.stderr else ""
    ended = now_ms()
    # The final records: every stopped task's own time of stopping.
    timeline.observe(c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks)
    return timeline, started, ended


def test_update_delay_and_pause(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, _ = cluster
    start_workers(tmp_path, m, workers, "w1")
    create(m, 3, "--update-delay", "1s")
    started = time.monotonic()
    assert m.ctl("service", "update", "web", "--image", "busybox:2").code == 0
    took = time.monotonic() - started
    assert took >= 2.0, f"3 batches of 1 with 1 s between them took {took:.1f}s"
    # Failure action pause (the default): the update stops where it failed.
    r = m.ctl("service", "update", "web", "--image", "registry.local/missing:3", "--timeout", "20s")
    assert r.code == 1 and "update paused" in r.err
    info = control(m).GetService(api.GetServiceRequest(ref="web")).service
    assert info.service.update_status.state == pb.UpdateStatus.PAUSED
    assert info.running >= 2


def test_rolling_update_waits_for_health(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, _ = cluster
    start_workers(tmp_path, m, workers, "w1", "w2")
    create(m, 6, "--update-parallelism", "2", "--health-cmd", "true", "--health-interval", "300ms")
    # create waited for health, not just for running
    assert sum(1 for t in live(m) if t.status.health == pb.HEALTH_HEALTHY) == 6
    timeline, started, ended = update_watched(m, 6)
    fewest = timeline.fewest(started, ended)
    assert fewest >= 4, f"only {fewest} healthy tasks at some moment during the update"
    assert {t.spec.container.image for t in live(m)} == {"busybox:2"}


def test_start_first_update_never_runs_fewer_than_replicas(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, _ = cluster
    start_workers(tmp_path, m, workers, "w1")
    create(
        m, 3, "--update-order", "start-first",
        "--health-cmd", "true", "--health-interval", "300ms",
    )  # fmt: skip
    timeline, started, ended = update_watched(m, 3)
    fewest = timeline.fewest(started, ended)
    assert fewest >= 3, f"only {fewest} ready tasks at some moment of a start-first update"
    after = live(m)
    assert sorted(t.slot for t in after) == [1, 2, 3]
    assert {t.spec.container.image for t in after} == {"busybox:2"}

