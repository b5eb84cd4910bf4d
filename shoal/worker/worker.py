"""The worker: the set of tasks assigned to this node and a runner for each."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from shoal.overlay.driver import Attachment, OverlayDriver
from shoal.overlay.egress import Egress
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker.executor import Reporter, TaskRunner
from shoal.worker.logs import serve_logs
from shoal.worker.resolver import RESOLV_CONF, Resolver
from shoal.worker.runtime.base import Runtime, RuntimeFailure, RuntimeUnavailable
from shoal.worker.secrets import TaskFiles
from shoal.worker.servicenet import ServiceNet
from shoal.worker.taskdb import TaskDB

log = logging.getLogger(__name__)

# An orphan's task is gone: nothing waits on its graceful end.
ORPHAN_STOP_GRACE_S = 5.0


class Worker:
    def __init__(
        self,
        runtime: Runtime,
        state_dir: Path,
        report: Reporter,
        overlay: OverlayDriver | None = None,
        egress: Egress | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.runtime = runtime
        self.overlay = overlay
        # Set by the agent: where tasks' secrets and configs are fetched and mounted.
        self.files: TaskFiles | None = None
        self.servicenet: ServiceNet | None = None
        self.resolv_conf: Path | None = None
        if overlay is not None and resolver is not None:
            self.servicenet = ServiceNet(
                overlay, egress, resolver, self._note, self._current, state_dir
            )
            # What a task's /etc/resolv.conf says: the resolver in its namespace.
            self.resolv_conf = state_dir / "resolv.conf"
            self.resolv_conf.write_text(RESOLV_CONF)
        self.networks: dict[str, pb.Network] = {}
        self._peer_updates: asyncio.Queue[dpb.PeerUpdate] = asyncio.Queue()
        self._peer_task: asyncio.Task[None] | None = None
        self.db = TaskDB(state_dir / "tasks")
        self.logs_dir = state_dir / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._report = report
        self.runners: dict[str, TaskRunner] = {}
        self._log_streams: dict[str, asyncio.Task[None]] = {}
        self._chores: set[asyncio.Task[None]] = set()  # removals and sweeps: close() waits
        self._removing: set[str] = set()  # tasks whose container a removal is taking away

    async def start(self) -> None:
        """Picks up the tasks of a previous run: their containers may still be running."""
        for net in self.db.load_networks():
            self.networks[net.id] = net
        tasks = self.db.load()
        if self.overlay is not None:
            for task in tasks:
                if task.status.state <= pb.RUNNING:
                    atts = self.attachments(task)
                    if atts:
                        self.overlay.restore(task.id, atts)
            await self.overlay.reconcile({t.id for t in tasks if t.status.state <= pb.RUNNING})
            await self._restore_services(tasks)
            self._peer_task = asyncio.create_task(self._apply_peers())
        for task in tasks:
            self._run(task)
        if self.runners:
            log.info("reattaching to %d task(s) from the previous run", len(self.runners))

    def attachments(self, task: pb.Task) -> list[Attachment]:
        """The task's overlay attachments, if its networks are known here."""
        out = []
        for a in task.networks:
            net = self.networks.get(a.network_id)
            if net is None or not a.addresses:
                return []
            out.append(Attachment(net, a.addresses[0], a.mac))
        return out

    async def _restore_services(self, tasks: list[pb.Task]) -> None:
        """Resolver, load balancer and egress of tasks a previous run wired."""
        if self.servicenet is None or self.overlay is None:
            return
        kept = set()
        for task in tasks:
            if task.status.state <= pb.RUNNING and os.path.exists(self.overlay.netns_path(task.id)):
                try:
                    await self.servicenet.task_up(task, self.overlay.netns_path(task.id), True)
                    kept.add(task.id)
                except Exception as err:
                    log.warning("task %s: restoring its service networking: %s", task.id, err)
        if self.servicenet.egress is not None:
            await self.servicenet.egress.reconcile(kept)
        self.servicenet.start()

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        self._report(task_id, status)
        if self.servicenet is not None:
            # A local task started, became healthy or stopped: published ports follow
            # at once (a task on no network is not in the peer table).
            self.servicenet.peers_changed()

    def _current(self, task_id: str) -> pb.Task | None:
        runner = self.runners.get(task_id)
        return runner.task if runner is not None else None

    def _note(self, task_id: str, err: str) -> None:
        runner = self.runners.get(task_id)
        if runner is not None:
            runner.note(err)

    def peers(self, update: dpb.PeerUpdate) -> None:
        self._peer_updates.put_nowait(update)

    def services(self, update: dpb.ServiceUpdate) -> None:
        if self.servicenet is not None:
            self.servicenet.services(update)

    async def _apply_peers(self) -> None:
        # One at a time, in order: a removal must not overtake the addition it undoes.
        assert self.overlay is not None
        while True:
            update = await self._peer_updates.get()
            try:
                await self.overlay.set_peers(update)
            except Exception:
                log.exception("programming overlay peers failed")
            if self.servicenet is not None:
                self.servicenet.peers_changed()

    async def close(self) -> None:
        """Agent shutdown: stop supervising; containers keep running."""
        for stream in self._log_streams.values():
            stream.cancel()
        if self._peer_task is not None:
            self._peer_task.cancel()
        await asyncio.gather(*(r.close() for r in self.runners.values()))
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        if self.servicenet is not None:
            await self.servicenet.close()

    def statuses(self) -> list[dpb.TaskStatusUpdate]:
        return [
            dpb.TaskStatusUpdate(task_id=task_id, status=r.task.status)
            for task_id, r in self.runners.items()
        ]

    def assign(self, assignments: dpb.Assignments) -> None:
        for net in assignments.networks:
            if self.networks.get(net.id) != net:
                self.networks[net.id] = net
                self.db.put_network(net)
        if assignments.full:
            wanted = {t.id for t in assignments.tasks}
            for task_id in list(self.runners):
                if task_id not in wanted:
                    self._remove(task_id)
            self._background(self._sweep_orphans(wanted))
        for task in assignments.tasks:
            runner = self.runners.get(task.id)
            if runner is not None:
                # A stop learned from a full set (the session just (re)started) is no
                # graceful one: the task was replaced while this node was away.
                runner.update(task, drain=not assignments.full)
                if self.servicenet is not None:
                    self.servicenet.peers_changed()  # maybe desired to stop: out of ports
            elif task.status.state <= pb.RUNNING:
                self._run(task)
            # A finished task we hold no record of has no container here: nothing to do.
        for task_id in assignments.removed:
            self._remove(task_id)

    def _run(self, task: pb.Task) -> None:
        copy = pb.Task()
        copy.CopyFrom(task)
        # Its record is written once it matters to a restart (see TaskRunner._set).
        runner = TaskRunner(copy, self.runtime, self.db, self.report, self.logs_dir, self)
        self.runners[task.id] = runner
        runner.start()

    def _remove(self, task_id: str) -> None:
        runner = self.runners.pop(task_id, None)
        if runner is None:
            return
        self._removing.add(task_id)
        removal = self._background(runner.remove())
        removal.add_done_callback(lambda _: self._removing.discard(task_id))

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Work that close() waits for."""
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
        return task

    async def _sweep_orphans(self, wanted: set[str]) -> None:
        """Removes the containers of this node's namespace that no task here owns: one
        whose removal gave up (containerd failing it), or whose record went with a
        wiped state dir, would otherwise run on unseen, beside its replacement. At
        every full assignment set (each session's start), as Swarm's agent does."""
        try:
            found = await self.runtime.list()
        except (RuntimeFailure, RuntimeUnavailable) as err:
            log.warning("looking for orphaned containers: %s", err)
            return
        for container_id in found:
            if container_id in wanted or container_id in self.runners:
                continue
            if container_id in self._removing:
                continue
            log.warning("container %s belongs to no task of this node: removing it", container_id)
            try:
                await self.runtime.stop(container_id, ORPHAN_STOP_GRACE_S)
                await self.runtime.remove(container_id)
            except (RuntimeFailure, RuntimeUnavailable) as err:
                log.warning("removing orphaned container %s: %s", container_id, err)

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
