"""The terminal progress bar of service create|update|scale."""

from __future__ import annotations

import contextlib
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal import views
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.progress import bar, progress_line, update_batch


def info(
    running: int, updated: int, state: int = 0, parallelism: int = 0, pulls: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A line of the manager's watch: the view of a WatchService message."""
    svc = pb.Service()
    svc.spec.annotations.name = "web"
    svc.spec.replicated.replicas = 6
    svc.spec.update.parallelism = parallelism
    svc.update_status.state = state  # type: ignore[assignment]
    service = api.ServiceInfo(service=svc, desired=6, running=running, running_updated=updated)
    return views.progress_view(api.WatchServiceResponse(service=service, task_progress=list(pulls)))


def test_bar() -> None:
    assert bar(0, 4, 8) == "[--------]"
    assert bar(2, 4, 8) == "[####----]"
    assert bar(9, 4, 8) == "[########]"
    assert bar(0, 0, 4) == "[####]"


def test_line_without_update() -> None:
    line = progress_line("web", info(3, 3), 200)
    assert line == "web [############------------] 3/6 running"
    assert progress_line("web", info(3, 3), 10) == line[:10]


def test_pulls_the_agents_report() -> None:
    pulls = ["pulling r/img:1: 3.1 of 57.0 MB", "pulling r/img:1: 9.0 of 57.0 MB"]
    line = progress_line("web", info(0, 0, pulls=tuple(pulls)), 200)
    assert line.endswith("0/6 running; pulling r/img:1: 3.1 of 57.0 MB (+1 more)")
    assert progress_line("web", info(0, 0, pulls=tuple(pulls[:1])), 200).endswith("57.0 MB")


def test_update_batches() -> None:
    updating = pb.UpdateStatus.UPDATING
    assert update_batch(info(6, 0, updating, 2)) == (1, 3)
    assert update_batch(info(6, 2, updating, 2)) == (2, 3)
    assert update_batch(info(6, 5, updating, 2)) == (3, 3)
    assert update_batch(info(6, 6, updating, 2)) == (3, 3)
    assert update_batch(info(6, 0, updating, 0)) == (1, 1)  # all at once
    assert update_batch(info(6, 6, pb.UpdateStatus.COMPLETED, 2)) is None
    line = progress_line("web", info(6, 2, updating, 2), 200)
    assert line.endswith("6/6 running, update batch 2 of 3")
    rollback = progress_line("web", info(6, 0, pb.UpdateStatus.ROLLBACK_STARTED, 3), 200)
    assert rollback.endswith("rollback batch 1 of 2")


@pytest.mark.integration
def test_create_and_update_draw_bars_on_a_terminal(
    tmp_path: Path, managers: list[ManagerProcess], workers: list[WorkerProcess]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    workers.append(WorkerProcess(tmp_path / "w1", m.addr, token, "--runtime", "simulated").start())

    def on_terminal(*args: str) -> str:
        """swarmctl with stderr on a pseudo-terminal: what a person would see."""
        primary, secondary = pty.openpty()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "shoal.swarmctl", *args],
                stdout=subprocess.PIPE,
                stderr=secondary,
                env={**os.environ, "SWARM_SOCKET": str(m.socket), "COLUMNS": "120"},
                timeout=60,
            )
            os.close(secondary)
            secondary = -1
            out = b""
            with contextlib.suppress(OSError):  # EIO once everything was read
                while chunk := os.read(primary, 65536):
                    out += chunk
        finally:
            os.close(primary)
            if secondary >= 0:
                os.close(secondary)
        assert proc.returncode == 0, out
        return out.decode(errors="replace")

    seen = on_terminal("service", "create", "--name", "web", "--image", "busybox",
                       "--replicas", "4", "--update-parallelism", "1", "sleep", "100")  # fmt: skip
    assert "web [" in seen and "] 4/4 running" in seen
    seen = on_terminal("service", "update", "--image", "busybox:2", "web")
    assert "update batch" in seen and " of 4" in seen
    assert "] 4/4 running" in seen
