"""A stop that does not take (the kill lost while containerd restarts) is not
reported as a shutdown: the agent tries again until the container has stopped, so
no container runs on unseen beside its replacement."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.proto import objects_pb2 as pb
from shoal.worker.executor import TaskRunner
from shoal.worker.runtime.simulated import SimulatedRuntime
from shoal.worker.taskdb import TaskDB

from .helpers import eventually


class LostStops(SimulatedRuntime):
    """The first stops return as if done, and the container runs on."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    async def stop(self, container_id: str, grace_s: float) -> None:
        if self.lost:
            self.lost -= 1
            return
        await super().stop(container_id, grace_s)


def test_a_stop_that_did_not_take_is_tried_again(tmp_path: Path) -> None:
    async def main() -> None:
        runtime = LostStops(lost=2)
        reported: list[tuple[int, str]] = []

        def report(task_id: str, status: pb.TaskStatus) -> None:
            running = runtime.containers.get(task_id)
            reported.append((status.state, running.status if running else "gone"))

        task = pb.Task(id="t1", desired_state=pb.RUNNING)
        task.spec.container.image = "busybox"
        runner = TaskRunner(task, runtime, TaskDB(tmp_path / "db"), report, tmp_path / "logs")
        runner.start()
        await eventually(lambda: runner.state == pb.RUNNING)
        stop = pb.Task()
        stop.CopyFrom(task)
        stop.desired_state = pb.SHUTDOWN
        runner.update(stop)
        await eventually(lambda: runner.state == pb.SHUTDOWN)
        assert runtime.lost == 0
        assert runtime.containers["t1"].status == "stopped"
        # Never reported shut down while its container still ran.
        assert (pb.SHUTDOWN, "running") not in reported
        await runner.close()

    asyncio.run(main())
