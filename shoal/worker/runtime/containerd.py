"""The containerd runtime: containers and tasks through containerd's gRPC API.

Nothing on the container path shells out (no `ctr`): images come from
images.py (pulled by Shoal's registry client, unpacked into snapshots);
containers get an OCI runtime spec Shoal writes (ocispec.py); tasks run under
the runc v2 shim with stdout and stderr appended to a log file. Each node uses
its own containerd namespace, so several nodes can share one containerd.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import signal
import uuid
from pathlib import Path

from google.protobuf import any_pb2

from shoal.mountpolicy import API_RULES, BindPolicy
from shoal.proto.containerd import containers_pb2 as containers
from shoal.proto.containerd import mount_pb2, runc_options_pb2, task_pb2
from shoal.proto.containerd import snapshots_pb2 as snapshots
from shoal.proto.containerd import tasks_pb2 as tasks
from shoal.registry import RegistryClient
from shoal.worker.runtime import ociruntime, ocispec
from shoal.worker.runtime.base import (
    ContainerConfig,
    ContainerNotFound,
    ContainerState,
    RuntimeFailure,
    RuntimeUnavailable,
)
from shoal.worker.runtime.connection import Containerd
from shoal.worker.runtime.gate import RampGate
from shoal.worker.runtime.images import ImageInfo, ImageStore, PullStats

log = logging.getLogger(__name__)

WAIT_AGAIN_S = 0.2

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNC = "io.containerd.runc.v2"
# containerd's typeurl finds the runc shim's options by their bare message name.
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
# A task whose shim died (killed, or crashed): containerd answers for it with this,
# and kills the container when it cleans up after the shim.
SHIM_DIED = "ttrpc: closed"
KILLED = 128 + signal.SIGKILL
# How many containers are made (snapshot, spec, record) at once, and how many tasks
# created and started (the shim, `runc create` and its init: ~70-100 ms of CPU each);
# the rest wait in arrival order, so the first of a burst runs first (gate.py).
# Starts ramp up to twice the cores: each also waits on the processes it starts.
CREATES_AT_ONCE = 2
STARTS_AT_ONCE = 2 * (os.cpu_count() or 1)


class ContainerdRuntime:
    name = "containerd"

    def __init__(
        self,
        socket: str = "/run/containerd/containerd.sock",
        namespace: str = "shoal",
        state_dir: Path | None = None,
        snapshotter: str = "overlayfs",
        registry: RegistryClient | None = None,
        binds: BindPolicy = API_RULES,
        oci_runtime: str = "runc",
    ) -> None:
        self.namespace = namespace
        # The OCI runtime the runc shim runs for each container (ociruntime.py); runc
        # is the shim's default, so it needs no options.
        self.oci_runtime, oci_path, _ = ociruntime.resolve(oci_runtime)
        self._shim_options: any_pb2.Any | None = None
        if self.oci_runtime != "runc":
            self._shim_options = any_pb2.Any(
                type_url=RUNC_OPTIONS_TYPE,
                value=runc_options_pb2.Options(binary_name=oci_path).SerializeToString(),
            )
        self.binds = binds
        self.snapshotter = snapshotter
        self.state_dir = state_dir or Path("/var/lib/shoal")
        self.ctrd = Containerd(socket, namespace)
        self.images = ImageStore(self.ctrd, registry or RegistryClient(), snapshotter)
        # Containers this process just made, with what starting them needs (rootfs
        # mounts, log URI): their start skips reading it back and looking for a task.
        self._made: dict[str, tuple[list[mount_pb2.Mount], str]] = {}
        self._creates = asyncio.Semaphore(CREATES_AT_ONCE)
        self._starts = RampGate(STARTS_AT_ONCE)

    async def close(self) -> None:
        await self.images.registry.close()
        await self.ctrd.close()

    @property
    def pull_stats(self) -> PullStats:
        return self.images.stats

    def pull_progress(self, image: str) -> tuple[int, int] | None:
        """(bytes fetched, bytes in all) of the image's layers while it is being pulled."""
        got = self.images.progress.get(image)
        return (got[0], got[1]) if got else None

    def cgroup_path(self, container_id: str) -> str:
        """The container's cgroup, relative to the cgroup root (per controller on v1)."""
        return f"/shoal/{self.namespace}/{container_id}"

    async def pull(self, image: str) -> None:
        await self.images.get(image)

    async def create(self, config: ContainerConfig) -> None:
        """Makes the container; idempotent (a snapshot that exists already tells that
        this container may: only then is its record looked for)."""
        info = await self.images.get(config.image)
        async with self._creates:
            # The first container of a burst starts alone (gate.py): the others' making
            # would take a share of the cores from it.
            await self._starts.until_shared()
            await self._make(config, info)

    async def _make(self, config: ContainerConfig, info: ImageInfo) -> None:
        # Under a lease from the snapshot's making until the container record refers to
        # it: containerd's garbage collector removes unreferenced snapshots, and it may
        # run in between (another pull or removal, on any node sharing this containerd).
        async with self.ctrd.lease("create") as lease:
            try:
                prepared = await self.ctrd.call(
                    self.ctrd.snapshots.Prepare,
                    snapshots.PrepareSnapshotRequest(
                        snapshotter=self.snapshotter, key=config.container_id, parent=info.chain_id
                    ),
                    lease,
                )
                mounts = list(prepared.mounts)
            except RuntimeFailure as err:
                if "already exists" not in str(err):
                    raise
                with contextlib.suppress(ContainerNotFound):
                    await self.ctrd.call(
                        self.ctrd.containers.Get,
                        containers.GetContainerRequest(id=config.container_id),
                    )
                    return  # made before (an agent restart): nothing to do
                mounts = list(
                    (
                        await self.ctrd.call(
                            self.ctrd.snapshots.Mounts,
                            snapshots.MountsRequest(
                                snapshotter=self.snapshotter, key=config.container_id
                            ),
                        )
                    ).mounts
                )
            rootfs_dirs = ocispec.layer_dirs(mounts)
            volumes = self.state_dir / "volumes"
            spec = ocispec.build(
                config,
                info.config,
                rootfs_dirs,
                volumes,
                cgroups_path=self.cgroup_path(config.container_id),
                binds=self.binds,
            )
            labels = dict(config.labels)
            if config.log_path is not None:
                # The runc shim appends stdout and stderr to a file:// URI itself.
                labels["shoal.log.uri"] = f"file://{config.log_path}"
            record = containers.Container(
                id=config.container_id,
                labels=labels,
                image=info.name,
                runtime=containers.Container.Runtime(name=RUNC, options=self._shim_options),
                spec=any_pb2.Any(type_url=SPEC_TYPE, value=json.dumps(spec).encode()),
                snapshotter=self.snapshotter,
                snapshot_key=config.container_id,
            )
            (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
            await self.ctrd.call(
                self.ctrd.containers.Create,
                containers.CreateContainerRequest(container=record),
                lease,
            )
        self._made[config.container_id] = (mounts, labels.get("shoal.log.uri", ""))

    async def start(self, container_id: str) -> int:
        made = self._made.pop(container_id, None)
        if made is not None:
            mounts, log_uri = made  # just made here: no task can exist yet
        else:
            mounts, log_uri = await self._prepared(container_id)
            with contextlib.suppress(ContainerNotFound):
                # A task left from a start that failed half-way: clear it first.
                existing = await self.ctrd.call(
                    self.ctrd.tasks.Get, tasks.GetRequest(container_id=container_id)
                )
                if existing.process.status == task_pb2.RUNNING:
                    return int(existing.process.pid)
                await self.ctrd.call(
                    self.ctrd.tasks.Delete, tasks.DeleteTaskRequest(container_id=container_id)
                )
        async with self._starts:
            created = await self.ctrd.call(
                self.ctrd.tasks.Create,
                tasks.CreateTaskRequest(
                    container_id=container_id, rootfs=mounts, stdout=log_uri, stderr=log_uri
                ),
            )
            await self.ctrd.call(
                self.ctrd.tasks.Start, tasks.StartRequest(container_id=container_id)
            )
        return int(created.pid)

    async def _prepared(self, container_id: str) -> tuple[list[mount_pb2.Mount], str]:
        """A container's rootfs mounts and log URI, read back from containerd."""
        got = await self.ctrd.call(
            self.ctrd.containers.Get, containers.GetContainerRequest(id=container_id)
        )
        resp = await self.ctrd.call(
            self.ctrd.snapshots.Mounts,
            snapshots.MountsRequest(
                snapshotter=got.container.snapshotter, key=got.container.snapshot_key
            ),
        )
        return list(resp.mounts), got.container.labels.get("shoal.log.uri", "")

    async def wait(self, container_id: str) -> int:
        """The container's exit code. No deadline: a container may run for months; and a
        containerd restart only breaks the call, not the container (its shim keeps it),
        so the wait is made again once containerd is back."""
        while True:
            try:
                resp = await self.ctrd.call(
                    self.ctrd.tasks.Wait,
                    tasks.WaitRequest(container_id=container_id),
                    deadline_s=None,
                )
                return int(resp.exit_status)
            except RuntimeUnavailable as err:
                log.warning("container %s: waiting again after %s", container_id, err)
                await asyncio.sleep(WAIT_AGAIN_S)
            except RuntimeFailure as err:
                if SHIM_DIED not in str(err):
                    raise
                log.warning("container %s: its shim died, and the container with it", container_id)
                return KILLED

    async def stop(self, container_id: str, grace_s: float) -> None:
        state = await self.state(container_id)
        if state is None or state.status != "running":
            return
        waiter = asyncio.ensure_future(self.wait(container_id))
        try:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self.ctrd.call(
                    self.ctrd.tasks.Kill,
                    tasks.KillRequest(container_id=container_id, signal=signal.SIGTERM, all=True),
                )
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace_s)
                return
            except TimeoutError:
                log.info("container %s ignored SIGTERM for %.0fs: SIGKILL", container_id, grace_s)
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self.ctrd.call(
                    self.ctrd.tasks.Kill,
                    tasks.KillRequest(container_id=container_id, signal=signal.SIGKILL, all=True),
                )
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await asyncio.wait_for(asyncio.shield(waiter), 10)
        finally:
            waiter.cancel()
            with contextlib.suppress(BaseException):
                await waiter

    async def remove(self, container_id: str) -> None:
        self._made.pop(container_id, None)
        with contextlib.suppress(ContainerNotFound):
            try:
                await self.ctrd.call(
                    self.ctrd.tasks.Delete, tasks.DeleteTaskRequest(container_id=container_id)
                )
            except RuntimeFailure as err:
                # Its shim died: containerd drops the task all the same, and says so.
                if SHIM_DIED not in str(err):
                    raise
        with contextlib.suppress(ContainerNotFound):
            await self.ctrd.call(
                self.ctrd.containers.Delete, containers.DeleteContainerRequest(id=container_id)
            )
        with contextlib.suppress(ContainerNotFound):
            await self.ctrd.call(
                self.ctrd.snapshots.Remove,
                snapshots.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=container_id),
            )

    async def state(self, container_id: str) -> ContainerState | None:
        try:
            got = await self.ctrd.call(
                self.ctrd.tasks.Get, tasks.GetRequest(container_id=container_id)
            )
        except ContainerNotFound:
            try:
                await self.ctrd.call(
                    self.ctrd.containers.Get, containers.GetContainerRequest(id=container_id)
                )
            except ContainerNotFound:
                return None
            return ContainerState(container_id, "created")
        except RuntimeFailure as err:
            if SHIM_DIED not in str(err):
                raise
            return ContainerState(container_id, "stopped", 0, KILLED)
        p = got.process
        status = {
            task_pb2.RUNNING: "running",
            task_pb2.STOPPED: "stopped",
            task_pb2.CREATED: "created",
        }.get(p.status, "unknown")
        return ContainerState(
            container_id, status, int(p.pid), int(p.exit_status) if status == "stopped" else None
        )

    async def list(self) -> builtins.list[str]:
        resp = await self.ctrd.call(self.ctrd.containers.List, containers.ListContainersRequest())
        return [c.id for c in resp.containers]

    async def exec(self, container_id: str, argv: builtins.list[str], timeout_s: float) -> int:
        got = await self.ctrd.call(
            self.ctrd.containers.Get, containers.GetContainerRequest(id=container_id)
        )
        process = json.loads(got.container.spec.value)["process"]
        process["args"] = argv
        exec_id = f"exec-{uuid.uuid4().hex[:12]}"
        await self.ctrd.call(
            self.ctrd.tasks.Exec,
            tasks.ExecProcessRequest(
                container_id=container_id,
                exec_id=exec_id,
                spec=any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps(process).encode()),
            ),
        )
        try:
            await self.ctrd.call(
                self.ctrd.tasks.Start,
                tasks.StartRequest(container_id=container_id, exec_id=exec_id),
            )
            resp = await asyncio.wait_for(
                self.ctrd.call(
                    self.ctrd.tasks.Wait,
                    tasks.WaitRequest(container_id=container_id, exec_id=exec_id),
                    deadline_s=None,
                ),
                timeout_s,
            )
            return int(resp.exit_status)
        except TimeoutError:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self.ctrd.call(
                    self.ctrd.tasks.Kill,
                    tasks.KillRequest(
                        container_id=container_id, exec_id=exec_id, signal=signal.SIGKILL
                    ),
                )
            return -1
        finally:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self.ctrd.call(
                    self.ctrd.tasks.DeleteProcess,
                    tasks.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                )
