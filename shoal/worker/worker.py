"""The worker: the set of tasks assigned to this node and a runner for each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker.executor import Reporter, TaskRunner
from shoal.worker.logs import serve_logs
from shoal.worker.runtime.base import Runtime
from shoal.worker.taskdb import TaskDB

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, runtime: Runtime, state_dir: Path, report: Reporter) -> None:
        self.runtime = runtime
        self.db = TaskDB(state_dir / "tasks")
        self.logs_dir = state_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.report = report
        self.runners: dict[str, TaskRunner] = {}
        self._log_streams: dict[str, asyncio.Task[None]] = {}
        self._removals: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Picks up the tasks of a previous run: their containers may still be running."""
        for task in self.db.load():
            self._run(task)
        if self.runners:
            log.info("reattaching to %d task(s) from the previous run", len(self.runners))

    async def close(self) -> None:
        """Agent shutdown: stop supervising; containers keep running."""
        for stream in self._log_streams.values():
            stream.cancel()
        await asyncio.gather(*(r.close() for r in self.runners.values()))
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)

    def statuses(self) -> list[dpb.TaskStatusUpdate]:
        return [
            dpb.TaskStatusUpdate(task_id=task_id, status=r.task.status)
            for task_id, r in self.runners.items()
        ]

    def assign(self, assignments: dpb.Assignments) -> None:
        if assignments.full:
            wanted = {t.id for t in assignments.tasks}
            for task_id in list(self.runners):
                if task_id not in wanted:
                    self._remove(task_id)
        for task in assignments.tasks:
            runner = self.runners.get(task.id)
            if runner is not None:
                runner.update(task)
            elif task.status.state <= pb.RUNNING:
                self._run(task)
            # A finished task we hold no record of has no container here: nothing to do.
        for task_id in assignments.removed:
            self._remove(task_id)

    def _run(self, task: pb.Task) -> None:
        copy = pb.Task()
        copy.CopyFrom(task)
        runner = TaskRunner(copy, self.runtime, self.db, self.report, self.logs_dir)
        self.db.put(copy)
        self.runners[task.id] = runner
        runner.start()

    def _remove(self, task_id: str) -> None:
        runner = self.runners.pop(task_id, None)
        if runner is None:
            return
        removal = asyncio.create_task(runner.remove())
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    # ------------------------------------------------------------ logs

    def serve_logs(
        self, request: dpb.LogRequest, send: Callable[[dpb.LogChunk], Awaitable[None]]
    ) -> None:
        stream = asyncio.create_task(serve_logs(request, self.logs_dir, set(self.runners), send))
        self._log_streams[request.request_id] = stream
        stream.add_done_callback(lambda _: self._log_streams.pop(request.request_id, None))

    def cancel_logs(self, request_id: str) -> None:
        stream = self._log_streams.pop(request_id, None)
        if stream is not None:
            stream.cancel()
