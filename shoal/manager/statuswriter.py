"""The agents' task status reports, written to etcd in batches: many tasks per
transaction, every FLUSH_INTERVAL_S, the latest report of a task winning; reports for
tasks that moved, went, or would go backwards are dropped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.manager.store import Cache, Kind, Store, Update
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.05


class StatusWriter:
    def __init__(self, store: Store, cache: Cache) -> None:
        self.store = store
        self.cache = cache
        self._pending: dict[str, tuple[str, pb.TaskStatus]] = {}
        self._wakeup = asyncio.Event()
        self._writing = False

    def flushed(self) -> bool:
        """No agent report waits to be written (part of GetCluster's idle signal)."""
        return not self._pending and not self._wakeup.is_set() and not self._writing

    def queue(self, node_id: str, updates: Any) -> None:
        for u in updates:
            self._pending[u.task_id] = (node_id, u.status)
        if self._pending:
            self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            # Let a batch gather: one transaction carries many tasks' reports.
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self._wakeup.clear()
            pending, self._pending = self._pending, {}
            self._writing = True
            try:
                await self._write(pending)
            except Exception as err:  # etcd away: keep the reports, try again
                log.warning("writing task status failed (%s); retrying", err)
                for task_id, item in pending.items():
                    self._pending.setdefault(task_id, item)
                await asyncio.sleep(0.5)
                self._wakeup.set()
            finally:
                self._writing = False

    async def _write(self, pending: dict[str, tuple[str, pb.TaskStatus]]) -> None:
        ops: list[Update] = []
        for task_id, (node_id, status) in pending.items():
            task = self.cache.get(Kind.TASK, task_id)
            # Reports for tasks that moved or went, or that would go backwards, are dropped.
            if task is None or task.node_id != node_id or status.state < task.status.state:
                continue
            if status == task.status:
                continue
            updated = pb.Task()
            updated.CopyFrom(task)
            updated.status.CopyFrom(status)
            ops.append(Update(updated))
        if not ops:
            return
        conflicts, revision = await self.store.batch_chunked(ops)
        if not conflicts:
            await self.cache.wait_for(revision)
            return
        # Someone else wrote some of these tasks: look again at those not applied.
        await self.cache.sync()
        for op in ops:
            written = op.obj
            assert isinstance(written, pb.Task)
            task = self.cache.get(Kind.TASK, written.id)
            if task is not None and task.status != written.status:
                self._pending.setdefault(written.id, pending[written.id])
        if self._pending:
            self._wakeup.set()
