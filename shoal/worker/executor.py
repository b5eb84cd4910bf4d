"""Runs one task through its states with a container runtime.

ACCEPTED -> PREPARING (pull, create) -> READY -> STARTING -> RUNNING ->
COMPLETE | FAILED, or REJECTED when it cannot be prepared, or SHUTDOWN when
the manager's desired state says stop. States only move forward. A runner
created for a task whose container already exists (agent restart) reattaches
to it instead of starting a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shoal.aiotasks import cancel_and_wait
from shoal.clock import now_ms
from shoal.defaults import ENDPOINT_DRAIN_MS
from shoal.overlay.driver import Attachment, OverlayDriver
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.base import (
    ContainerConfig,
    ImagePullError,
    MountConfig,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from shoal.worker.secrets import FilesUnavailable, TaskFiles
from shoal.worker.servicenet import ServiceNet
from shoal.worker.taskdb import TaskDB

log = logging.getLogger(__name__)

Reporter = Callable[[str, pb.TaskStatus], None]


class NetworkProvider(Protocol):
    overlay: OverlayDriver | None
    # The task's secrets and configs (None: this worker mounts none).
    files: TaskFiles | None
    servicenet: ServiceNet | None
    resolv_conf: Path | None

    def attachments(self, task: pb.Task) -> list[Attachment]: ...


def container_config(
    task: pb.Task,
    log_path: Path,
    netns_path: str | None,
    files: list[MountConfig] | None = None,
    resolv_conf: Path | None = None,
) -> ContainerConfig:
    c = task.spec.container
    labels = dict(c.labels)
    labels.update(
        {
            "shoal.task.id": task.id,
            "shoal.service.id": task.service_id,
            "shoal.service.name": task.service_name,
            "shoal.task.slot": str(task.slot),
        }
    )
    return ContainerConfig(
        container_id=task.id,
        image=c.image,
        command=list(c.command),
        args=list(c.args),
        env=list(c.env),
        workdir=c.dir,
        user=c.user,
        hostname=task.id[:12],
        labels=labels,
        mounts=[
            MountConfig(
                type="volume" if m.type == pb.Mount.VOLUME else "bind",
                source=m.source,
                target=m.target,
                readonly=m.readonly,
            )
            for m in c.mounts
        ]
        + (files or []),
        nano_cpus=task.spec.limits.nano_cpus,
        memory_bytes=task.spec.limits.memory_bytes,
        log_path=log_path,
        netns_path=netns_path,
        # A task in a namespace of ours resolves through the cluster resolver there.
        resolv_conf=str(resolv_conf) if resolv_conf else None,
        cap_add=list(c.cap_add),
        cap_drop=list(c.cap_drop),
        seccomp_unconfined=c.seccomp == "unconfined",
        pids_limit=c.pids_limit,
    )


RUNTIME_RETRY_MIN_S = 0.2
RUNTIME_RETRY_MAX_S = 5.0
# Tries to remove a container while containerd is away (~1 minute in all).
REMOVE_TRIES = 15
DEFAULT_HEALTH_INTERVAL_MS = 5_000
DEFAULT_HEALTH_TIMEOUT_MS = 10_000
DEFAULT_HEALTH_RETRIES = 3
# A pull that takes longer reports its progress this often (one status write each).
PULL_REPORT_S = 2.0


class NetworkError(Exception):
    pass


class TaskRunner:
    def __init__(
        self,
        task: pb.Task,
        runtime: Runtime,
        db: TaskDB,
        report: Reporter,
        logs_dir: Path,
        networks: NetworkProvider | None = None,
    ) -> None:
        self.task = task
        self.networks = networks
        self.runtime = runtime
        self.db = db
        self.report = report
        self.log_path = logs_dir / f"{task.id}.log"
        self._changed = asyncio.Event()
        self._run: asyncio.Task[None] | None = None
        self._detaching: asyncio.Future[None] | None = None
        self._no_drain = False

    @property
    def state(self) -> int:
        return int(self.task.status.state)

    def start(self) -> None:
        self._run = asyncio.create_task(self._main(), name=f"task-{self.task.id[:12]}")

    def update(self, assigned: pb.Task, drain: bool = True) -> None:
        """A new version from the manager: take its spec and desired state, keep our status.
        drain=False: a stop it asks for skips the endpoint drain."""
        if not drain and assigned.desired_state > pb.RUNNING >= self.task.desired_state:
            self._no_drain = True
        status = pb.TaskStatus()
        status.CopyFrom(self.task.status)
        if assigned.status.state > status.state:
            status.CopyFrom(assigned.status)
        self.task.CopyFrom(assigned)
        self.task.status.CopyFrom(status)
        if status.state >= pb.STARTING:
            self.db.put(self.task)
        self._changed.set()

    async def close(self) -> None:
        """Stops managing the task (agent shutdown); its container keeps running."""
        await cancel_and_wait([self._run])

    async def remove(self) -> None:
        """The task is gone from the manager: stop and delete its container and record."""
        await self.close()
        await self._detach()
        await self._release_files()
        # containerd restarting (a call cut mid-way) is waited out: given up, the
        # container would be left behind for good, its record gone (the chaos test).
        for attempt in range(REMOVE_TRIES):
            try:
                if await self.runtime.state(self.task.id) is not None:
                    await self.runtime.stop(self.task.id, self._grace_s())
                    await self.runtime.remove(self.task.id)
                break
            except RuntimeUnavailable as err:
                log.warning("task %s: removing its container: %s; again", self.task.id, err)
                await asyncio.sleep(min(RUNTIME_RETRY_MIN_S * 2**attempt, RUNTIME_RETRY_MAX_S))
            except RuntimeFailure as err:
                log.warning("task %s: removing its container failed: %s", self.task.id, err)
                break
        for path in (self.log_path, *self.log_path.parent.glob(f"{self.log_path.name}.*")):
            path.unlink(missing_ok=True)  # and its rotated copies
        self.db.delete(self.task.id)

    # ------------------------------------------------------------ internals

    def _grace_s(self) -> float:
        return (self.task.spec.container.stop_grace_period_ms or 10_000) / 1000

    def _set(
        self,
        state: pb.TaskState.ValueType,
        message: str,
        err: str = "",
        exit_code: int | None = None,
        pid: int | None = None,
        health: pb.HealthState.ValueType | None = None,
    ) -> None:
        status = self.task.status
        if state < status.state:
            return  # never backwards
        if health is not None:
            status.health = health
        elif state == pb.RUNNING and self._health_argv() and not status.health:
            status.health = pb.HEALTH_STARTING
        status.state = state
        status.message = message
        status.err = err
        status.timestamp_ms = now_ms()
        status.container.container_id = self.task.id if state >= pb.READY else ""
        if pid is not None:
            status.container.pid = pid
        if exit_code is not None:
            status.container.exit_code = exit_code
        if state == pb.STARTING or state > pb.RUNNING:
            # What a restarted agent must know that the manager may not: a container
            # may exist (written before it does), or the task ended (and how). Before
            # STARTING there is nothing to find; RUNNING is found from the container.
            self.db.put(self.task)
        out = pb.TaskStatus()
        out.CopyFrom(status)
        self.report(self.task.id, out)

    async def _pull(self, image: str) -> None:
        """Pulls the image; a long pull reports how far it is (swarmctl shows it)."""
        pull = asyncio.ensure_future(self.runtime.pull(image))
        progress = getattr(self.runtime, "pull_progress", None)
        try:
            while not (await asyncio.wait({pull}, timeout=PULL_REPORT_S))[0]:
                got = progress(image) if progress is not None else None
                if got is not None and got[1]:
                    mb = f"{got[0] / 1e6:.1f} of {got[1] / 1e6:.1f} MB"
                    self._set(pb.PREPARING, f"pulling {image}: {mb}")
            pull.result()
        finally:
            pull.cancel()

    async def _attach(self) -> str | None:
        """The task's network namespace, wired into its overlay networks (None: none).

        A task on no network whose service publishes ports gets a namespace with only
        its egress leg: published ports reach it through that."""
        net = self.networks
        if not self.task.networks:
            sn = net.servicenet if net is not None else None
            if net is None or net.overlay is None or sn is None or not sn.wants_netns(self.task):
                return None
            atts = []
        elif self.networks is None or self.networks.overlay is None:
            raise NetworkError("this node has no overlay driver")
        else:
            atts = self.networks.attachments(self.task)
            if not atts:
                raise NetworkError("the task's networks are unknown on this node")
        assert self.networks is not None and self.networks.overlay is not None
        try:
            path = await self.networks.overlay.attach(self.task.id, atts)
            if self.networks.servicenet is not None:
                await self.networks.servicenet.task_up(self.task, path)
            return path
        except Exception as err:
            raise NetworkError(f"network setup failed: {err}") from err

    async def _detach(self) -> None:
        """Frees the task's namespace and addresses on this host once it stopped.

        Shielded: a removal that cancels the runner mid-way must not leave half a
        teardown (a popped record with its devices still there)."""
        if self._detaching is None:
            self._detaching = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._detaching)

    async def _teardown(self) -> None:
        if self.networks is not None and self.networks.overlay is not None:
            if self.networks.servicenet is not None:
                try:
                    await self.networks.servicenet.task_down(self.task.id)
                except Exception as err:
                    log.warning(
                        "task %s: service networking teardown failed: %s", self.task.id, err
                    )
            try:
                await self.networks.overlay.detach(self.task.id)
            except Exception as err:
                log.warning("task %s: network teardown failed: %s", self.task.id, err)

    async def _files(self) -> list[MountConfig]:
        """Bind mounts of the task's secrets and configs (fetched now, on a tmpfs)."""
        store = self.networks.files if self.networks is not None else None
        if store is None:
            if self.task.spec.container.secrets or self.task.spec.container.configs:
                raise FilesUnavailable("this node cannot mount secrets or configs")
            return []
        return await store.prepare(self.task)

    async def _release_files(self) -> None:
        store = self.networks.files if self.networks is not None else None
        if store is not None:
            await store.release(self.task.id)

    def _wants_stop(self) -> bool:
        return self.task.desired_state > pb.RUNNING

    async def _main(self) -> None:
        try:
            await self._drive_through_outages()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("task %s: unexpected failure", self.task.id)
            if self.state <= pb.RUNNING:
                self._set(pb.FAILED, "failed", f"agent error: {err}")
        if self.state > pb.RUNNING:
            # Done for good: its address may be handed out again, so its namespace goes now.
            await self._detach()
            await self._release_files()

    async def _drive_through_outages(self) -> None:
        """Drives the task; while the runtime is unreachable, tries again (every step
        is idempotent: a running container is reattached, not replaced)."""
        delay = RUNTIME_RETRY_MIN_S
        while True:
            try:
                await self._drive()
                return
            except RuntimeUnavailable as err:
                log.warning("task %s: %s; trying again in %.1fs", self.task.id, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RUNTIME_RETRY_MAX_S)

    async def _drive(self) -> None:
        if self.state > pb.RUNNING:
            return  # finished: nothing to run, the container (if any) waits for removal
        # A task this agent never took up (state before ACCEPTED) has at most a created
        # container (the record of a start is written before it): the steps below
        # handle that, so only tasks it took up ask the runtime first.
        existing = await self.runtime.state(self.task.id) if self.state >= pb.ACCEPTED else None
        if existing is not None and existing.status == "running":
            # Reattach: the container outlived an agent restart.
            if self.state < pb.RUNNING:
                self._set(pb.RUNNING, "started", pid=existing.pid)
            await self._supervise()
            return
        if existing is not None and existing.status == "stopped" and self.state >= pb.STARTING:
            self._exited(existing.exit_code or 0)
            return
        if existing is None and self.state >= pb.STARTING:
            self._set(pb.FAILED, "failed", "container disappeared (removed outside Shoal?)")
            return

        if self._wants_stop():
            self._set(pb.SHUTDOWN, "shutdown before start")
            return
        if self.state < pb.ACCEPTED:
            self._set(pb.ACCEPTED, "accepted")
        self._set(pb.PREPARING, "preparing")
        try:
            await self._pull(self.task.spec.container.image)
            if self._wants_stop():
                self._set(pb.SHUTDOWN, "shutdown before start")
                return
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            netns = await self._attach()
            files = await self._files()
            resolv = self.networks.resolv_conf if netns and self.networks is not None else None
            await self.runtime.create(
                container_config(self.task, self.log_path, netns, files, resolv)
            )
        except (NetworkError, FilesUnavailable, ImagePullError) as err:
            self._set(pb.REJECTED, "rejected", str(err))
            return
        except RuntimeFailure as err:
            self._set(pb.REJECTED, "rejected", f"create container: {err}")
            return
        self._set(pb.READY, "ready")
        # desired READY holds a prepared task back (a restart delay; a stop-first
        # update's replacement until the task it replaces has stopped).
        while self.task.desired_state < pb.RUNNING and not self._wants_stop():
            self._changed.clear()
            await self._changed.wait()
        if self._wants_stop():
            await self._stop_and_report()
            return
        self._set(pb.STARTING, "starting")
        try:
            pid = await self.runtime.start(self.task.id)
        except RuntimeFailure as err:
            self._set(pb.FAILED, "failed", f"start container: {err}")
            return
        self._set(pb.RUNNING, "started", pid=pid)
        await self._supervise()

    async def _supervise(self) -> None:
        """Waits for the container to exit, or for the manager to want it stopped."""
        exited = asyncio.create_task(self.runtime.wait(self.task.id))
        health = asyncio.create_task(self._check_health()) if self._health_argv() else None
        try:
            while True:
                self._changed.clear()
                if self._wants_stop():
                    await self._stop_and_report()
                    return
                changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait({exited, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if exited in done:
                    self._exited(exited.result())
                    return
        finally:
            exited.cancel()
            await cancel_and_wait([health])

    def _health_argv(self) -> list[str]:
        test = list(self.task.spec.container.healthcheck.test)
        if not test or test[0] == "NONE":
            return []
        return ["sh", "-c", " ".join(test[1:])] if test[0] == "CMD-SHELL" else test[1:]

    async def _check_health(self) -> None:
        """Runs the health command in the container every interval, like Docker's HEALTHCHECK.

        The first success makes the task healthy (rolling updates wait for it); `retries`
        failures in a row make it unhealthy, and an unhealthy container is stopped:
        the task fails and its restart policy replaces it.
        """
        check = self.task.spec.container.healthcheck
        interval = (check.interval_ms or DEFAULT_HEALTH_INTERVAL_MS) / 1000
        timeout = (check.timeout_ms or DEFAULT_HEALTH_TIMEOUT_MS) / 1000
        retries = check.retries or DEFAULT_HEALTH_RETRIES
        argv = self._health_argv()
        failures = 0
        loop = asyncio.get_running_loop()
        # Failures while the container starts up do not count (Docker's start_period).
        grace_until = loop.time() + check.start_period_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                code = await self.runtime.exec(self.task.id, argv, timeout)
            except RuntimeUnavailable as err:
                # The runtime is away, not the container: no verdict on its health.
                log.info("task %s: health check skipped: %s", self.task.id, err)
                continue
            except RuntimeFailure as err:
                log.info("task %s: health check could not run: %s", self.task.id, err)
                code = -1
            if code == 0:
                failures = 0
                if self.task.status.health != pb.HEALTH_HEALTHY:
                    self._set(pb.RUNNING, "healthy", health=pb.HEALTH_HEALTHY)
                continue
            if loop.time() < grace_until:
                continue
            failures += 1
            if failures >= retries:
                self._set(
                    pb.RUNNING,
                    "unhealthy",
                    f"health check failed {failures} times",
                    health=pb.HEALTH_UNHEALTHY,
                )
                await self.runtime.stop(self.task.id, self._grace_s())
                return

    def _exited(self, code: int) -> None:
        if self._wants_stop():
            self._set(pb.SHUTDOWN, "shutdown", exit_code=code)
        elif self.task.status.health == pb.HEALTH_UNHEALTHY:
            self._set(
                pb.FAILED, "failed", f"task: unhealthy container (exit {code})", exit_code=code
            )
        elif code == 0:
            self._set(pb.COMPLETE, "finished", exit_code=0)
        else:
            self._set(pb.FAILED, "failed", f"task: non-zero exit ({code})", exit_code=code)

    def note(self, err: str) -> None:
        """A problem of a running task that does not stop it (a published port taken)."""
        if self.state == pb.RUNNING and self.task.status.err != err:
            self._set(pb.RUNNING, self.task.status.message, err)

    async def _drain(self) -> None:
        """Out of DNS and load balancers (the manager stopped listing it) before SIGTERM."""
        c = self.task.spec.container
        if self.task.networks and self.state == pb.RUNNING and not self._no_drain:
            drain = c.endpoint_drain_ms if c.HasField("endpoint_drain_ms") else ENDPOINT_DRAIN_MS
            await asyncio.sleep(drain / 1000)

    async def _stop_and_report(self) -> None:
        await self._drain()
        try:
            await self.runtime.stop(self.task.id, self._grace_s())
        except RuntimeFailure as err:
            log.warning("task %s: stop failed: %s", self.task.id, err)
        state = await self.runtime.state(self.task.id)
        if state is not None and state.status == "running":
            # The stop did not take (containerd restarting under it): reported shut
            # down, the container would run on unseen beside its replacement.
            raise RuntimeUnavailable("container still running after stop")
        code = state.exit_code if state is not None and state.exit_code is not None else None
        self._set(pb.SHUTDOWN, "shutdown", exit_code=code)
