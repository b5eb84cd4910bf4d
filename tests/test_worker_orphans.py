"""A container in the node's namespace that no task of the node owns (its removal
gave up while containerd failed, or its record went with a wiped state dir) is
removed when a session starts, not left running beside its replacement."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.simulated import SimulatedRuntime
from shoal.worker.worker import Worker

from .helpers import eventually


def _task(task_id: str) -> pb.Task:
    task = pb.Task(id=task_id, desired_state=pb.RUNNING)
    task.status.state = pb.ASSIGNED
    task.spec.container.image = "busybox"
    return task


async def _running(runtime: SimulatedRuntime, container_id: str) -> None:
    await runtime.create(ContainerConfig(container_id=container_id, image="busybox"))
    await runtime.start(container_id)


def test_a_full_assignment_set_removes_containers_no_task_owns(tmp_path: Path) -> None:
    async def main() -> None:
        runtime = SimulatedRuntime()
        await _running(runtime, "orphan")
        worker = Worker(runtime, tmp_path, lambda task_id, status: None)
        await worker.start()
        try:
            # An update that is not a full set says nothing of what else runs here.
            worker.assign(dpb.Assignments(full=False, tasks=[_task("t1")]))
            await eventually(lambda: worker.runners["t1"].state == pb.RUNNING)
            await asyncio.sleep(0.05)
            assert runtime.containers["orphan"].status == "running"

            worker.assign(dpb.Assignments(full=True, tasks=[_task("t1")]))
            await eventually(lambda: "orphan" not in runtime.containers)
            assert runtime.containers["t1"].status == "running"
            assert worker.runners["t1"].state == pb.RUNNING
        finally:
            await worker.close()

    asyncio.run(main())


def test_a_container_being_removed_is_left_to_its_removal(tmp_path: Path) -> None:
    async def main() -> None:
        runtime = SimulatedRuntime()
        worker = Worker(runtime, tmp_path, lambda task_id, status: None)
        await worker.start()
        try:
            worker.assign(dpb.Assignments(full=True, tasks=[_task("t1")]))
            await eventually(lambda: worker.runners["t1"].state == pb.RUNNING)
            stops: list[str] = []
            stop = runtime.stop

            async def counted(container_id: str, grace_s: float) -> None:
                stops.append(container_id)
                await stop(container_id, grace_s)

            runtime.stop = counted  # type: ignore[method-assign]
            # The task is gone from the set: its own removal stops it, the sweep does not.
            worker.assign(dpb.Assignments(full=True))
            await eventually(lambda: "t1" not in runtime.containers)
            await asyncio.sleep(0.05)
            assert stops == ["t1"]
        finally:
            await worker.close()

    asyncio.run(main())
