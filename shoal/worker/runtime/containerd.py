"""The containerd runtime: images, containers and tasks through containerd's gRPC API.

Nothing on the container path shells out (no `ctr`): images are pulled by
Shoal's registry client into containerd's content store under a lease, with
the garbage-collection labels containerd's own client sets, unpacked layer by
layer (snapshots + diff service), and recorded as an image; containers get an
OCI runtime spec Shoal writes; tasks run under the runc v2 shim with stdout
and stderr appended to a log file. Each node uses its own containerd
namespace, so several nodes can share one containerd.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import hashlib
import json
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import any_pb2, field_mask_pb2

from shoal.mountpolicy import API_RULES, BindPolicy
from shoal.proto.containerd import containers_pb2 as containers
from shoal.proto.containerd import containers_pb2_grpc as containers_grpc
from shoal.proto.containerd import content_pb2 as content
from shoal.proto.containerd import content_pb2_grpc as content_grpc
from shoal.proto.containerd import descriptor_pb2 as descriptor
from shoal.proto.containerd import diff_pb2 as diff
from shoal.proto.containerd import diff_pb2_grpc as diff_grpc
from shoal.proto.containerd import images_pb2 as images
from shoal.proto.containerd import images_pb2_grpc as images_grpc
from shoal.proto.containerd import leases_pb2 as leases
from shoal.proto.containerd import leases_pb2_grpc as leases_grpc
from shoal.proto.containerd import snapshots_pb2 as snapshots
from shoal.proto.containerd import snapshots_pb2_grpc as snapshots_grpc
from shoal.proto.containerd import task_pb2
from shoal.proto.containerd import tasks_pb2 as tasks
from shoal.proto.containerd import tasks_pb2_grpc as tasks_grpc
from shoal.worker.runtime import ocispec
from shoal.worker.runtime.base import (
    ContainerConfig,
    ContainerNotFound,
    ContainerState,
    ImagePullError,
    RuntimeFailure,
)
from shoal.worker.runtime.registry import (
    INDEX_TYPES,
    Descriptor,
    RegistryClient,
    ResolvedImage,
    parse_reference,
    this_platform,
)

log = logging.getLogger(__name__)

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RUNC = "io.containerd.runc.v2"
CALL_TIMEOUT_S = 30.0
WRITE_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageInfo:
    """What a container needs of its image: the config and the top layer's chain ID."""

    name: str
    config: dict[str, Any]
    chain_id: str


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain IDs of layers: snapshot names in containerd."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _desc_pb(d: Descriptor) -> descriptor.Descriptor:
    return descriptor.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=d.annotations
    )


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
    ) -> None:
        self.namespace = namespace
        self.binds = binds
        self.snapshotter = snapshotter
        self.state_dir = state_dir or Path("/var/lib/shoal")
        self.channel = grpc.aio.insecure_channel(
            f"unix://{socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.containers = containers_grpc.ContainersStub(self.channel)
        self.content = content_grpc.ContentStub(self.channel)
        self.images = images_grpc.ImagesStub(self.channel)
        self.snapshots = snapshots_grpc.SnapshotsStub(self.channel)
        self.tasks = tasks_grpc.TasksStub(self.channel)
        self.diff = diff_grpc.DiffStub(self.channel)
        self.leases = leases_grpc.LeasesStub(self.channel)
        self.registry = registry or RegistryClient()
        self._images: dict[str, ImageInfo] = {}
        self._pulls: dict[str, asyncio.Future[ImageInfo]] = {}

    def _md(self, lease: str = "") -> list[tuple[str, str]]:
        md = [("containerd-namespace", self.namespace)]
        if lease:
            md.append(("containerd-lease", lease))
        return md

    async def _call(
        self, fn: Any, request: Any, lease: str = "", deadline_s: float | None = CALL_TIMEOUT_S
    ) -> Any:
        try:
            return await fn(request, metadata=self._md(lease), timeout=deadline_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise ContainerNotFound(err.details() or "not found") from None
            raise RuntimeFailure(f"containerd: {err.details() or err.code().name}") from None

    async def close(self) -> None:
        await self.registry.close()
        await self.channel.close()

    # ------------------------------------------------------------ images

    async def pull(self, image: str) -> None:
        await self._image(image)

    async def _image(self, image: str) -> ImageInfo:
        """The image's info, pulling it first if containerd does not have it."""
        cached = self._images.get(image)
        if cached is not None:
            return cached
        running = self._pulls.get(image)
        if running is None:
            # One pull per image at a time, however many tasks want it.
            running = asyncio.ensure_future(self._load_or_pull(image))
            self._pulls[image] = running
            running.add_done_callback(lambda _: self._pulls.pop(image, None))
        info = await asyncio.shield(running)
        self._images[image] = info
        return info

    async def _load_or_pull(self, image: str) -> ImageInfo:
        try:
            name = parse_reference(image).name
        except ImagePullError:
            raise
        with contextlib.suppress(ContainerNotFound):
            got = await self._call(self.images.Get, images.GetImageRequest(name=name))
            info = await self._info_from_store(name, got.image.target)
            if info is not None:
                return info
        return await self._pull(image)

    async def _read(self, digest: str) -> bytes:
        chunks = []
        call = self.content.Read(
            content.ReadContentRequest(digest=digest), metadata=self._md(), timeout=CALL_TIMEOUT_S
        )
        try:
            async for resp in call:
                chunks.append(resp.data)
        except grpc.aio.AioRpcError as err:
            raise ContainerNotFound(f"content {digest}: {err.details()}") from None
        return b"".join(chunks)

    async def _info_from_store(self, name: str, target: Any) -> ImageInfo | None:
        """An image already in containerd, if its content and snapshots are all there."""
        try:
            manifest_digest = target.digest
            if target.media_type in INDEX_TYPES:
                index = json.loads(await self._read(target.digest))
                wanted = this_platform()
                manifest_digest = next(
                    m["digest"]
                    for m in index["manifests"]
                    if (m.get("platform", {}).get("os"), m.get("platform", {}).get("architecture"))
                    == wanted
                )
            manifest = json.loads(await self._read(manifest_digest))
            config = json.loads(await self._read(manifest["config"]["digest"]))
            top = chain_ids(config["rootfs"]["diff_ids"])[-1]
            await self._call(
                self.snapshots.Stat,
                snapshots.StatSnapshotRequest(snapshotter=self.snapshotter, key=top),
            )
        except (ContainerNotFound, KeyError, StopIteration, IndexError, ValueError):
            return None
        return ImageInfo(name, config, top)

    @contextlib.asynccontextmanager
    async def _lease(self, purpose: str) -> AsyncIterator[str]:
        """A containerd lease: what is made under it is safe from containerd's garbage
        collector until the lease goes (or expires, should we die holding it)."""
        lease = f"shoal-{purpose}-{uuid.uuid4().hex}"
        expire = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
        await self._call(
            self.leases.Create,
            leases.CreateRequest(id=lease, labels={"containerd.io/gc.expire": expire}),
        )
        try:
            yield lease
        finally:
            with contextlib.suppress(RuntimeFailure, ContainerNotFound):
                await self._call(self.leases.Delete, leases.DeleteRequest(id=lease))

    async def _pull(self, image: str) -> ImageInfo:
        resolved = await self.registry.resolve(image)
        async with self._lease("pull") as lease:
            config_bytes = await self.registry.blob(resolved.ref, resolved.config)
            config = json.loads(config_bytes)
            diff_ids = config.get("rootfs", {}).get("diff_ids", [])
            if len(diff_ids) != len(resolved.layers):
                raise ImagePullError(f"pull {image}: config and manifest disagree on layers")
            for layer, diff_id in zip(resolved.layers, diff_ids, strict=True):
                await self._fetch(resolved, layer, lease, {"containerd.io/uncompressed": diff_id})
            chains = chain_ids(diff_ids)
            await self._unpack(resolved, chains, lease)
            await self._write(
                config_bytes,
                resolved.config,
                lease,
                {
                    f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chains[-1],
                },
            )
            refs = {"containerd.io/gc.ref.content.config": resolved.config.digest}
            refs.update(
                {
                    f"containerd.io/gc.ref.content.l.{i}": layer.digest
                    for i, layer in enumerate(resolved.layers)
                }
            )
            await self._write(resolved.manifest_body, resolved.manifest, lease, refs)
            if resolved.index_body is not None:
                await self._write(
                    resolved.index_body,
                    resolved.target,
                    lease,
                    {"containerd.io/gc.ref.content.m.0": resolved.manifest.digest},
                )
            record = images.Image(name=resolved.ref.name, target=_desc_pb(resolved.target))
            try:
                await self._call(self.images.Create, images.CreateImageRequest(image=record))
            except RuntimeFailure:
                await self._call(self.images.Update, images.UpdateImageRequest(image=record))
            log.info("pulled %s (%d layers)", resolved.ref.name, len(resolved.layers))
            return ImageInfo(resolved.ref.name, config, chains[-1])

    async def _exists(self, digest: str) -> bool:
        try:
            await self._call(self.content.Info, content.InfoRequest(digest=digest))
            return True
        except ContainerNotFound:
            return False

    async def _fetch(
        self, resolved: ResolvedImage, desc: Descriptor, lease: str, labels: dict[str, str]
    ) -> None:
        if await self._exists(desc.digest):
            return
        await self._write_stream(self.registry.blob_stream(resolved.ref, desc), desc, lease, labels)

    async def _write(
        self, data: bytes, desc: Descriptor, lease: str, labels: dict[str, str]
    ) -> None:
        if await self._exists(desc.digest):
            # Already there: make sure it carries the GC labels (they keep it alive).
            await self._call(
                self.content.Update,
                content.UpdateRequest(
                    info=content.Info(digest=desc.digest, labels=labels),
                    update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
                ),
            )
            return

        async def one() -> AsyncIterator[bytes]:
            yield data

        await self._write_stream(one(), desc, lease, labels)

    async def _write_stream(
        self, chunks: AsyncIterator[bytes], desc: Descriptor, lease: str, labels: dict[str, str]
    ) -> None:
        ref = f"shoal-{desc.digest}"

        async def requests() -> AsyncIterator[content.WriteContentRequest]:
            offset = 0
            async for chunk in chunks:
                for i in range(0, len(chunk), WRITE_CHUNK):
                    part = chunk[i : i + WRITE_CHUNK]
                    yield content.WriteContentRequest(
                        action=content.WRITE,
                        ref=ref,
                        total=desc.size,
                        expected=desc.digest,
                        offset=offset,
                        data=part,
                    )
                    offset += len(part)
            yield content.WriteContentRequest(
                action=content.COMMIT,
                ref=ref,
                total=desc.size,
                expected=desc.digest,
                offset=offset,
                labels=labels,
            )

        call = self.content.Write(requests(), metadata=self._md(lease))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise ImagePullError(f"storing {desc.digest}: {err.details()}") from None

    async def _unpack(self, resolved: ResolvedImage, chains: list[str], lease: str) -> None:
        parent = ""
        for layer, chain in zip(resolved.layers, chains, strict=True):
            try:
                await self._call(
                    self.snapshots.Stat,
                    snapshots.StatSnapshotRequest(snapshotter=self.snapshotter, key=chain),
                )
                parent = chain
                continue
            except ContainerNotFound:
                pass
            key = f"extract-{uuid.uuid4().hex}-{chain}"
            prepared = await self._call(
                self.snapshots.Prepare,
                snapshots.PrepareSnapshotRequest(
                    snapshotter=self.snapshotter, key=key, parent=parent
                ),
                lease,
            )
            try:
                await self._call(
                    self.diff.Apply,
                    diff.ApplyRequest(diff=_desc_pb(layer), mounts=prepared.mounts),
                    lease,
                    deadline_s=600,
                )
                await self._call(
                    self.snapshots.Commit,
                    snapshots.CommitSnapshotRequest(
                        snapshotter=self.snapshotter, name=chain, key=key
                    ),
                    lease,
                )
            except RuntimeFailure as err:
                with contextlib.suppress(RuntimeFailure, ContainerNotFound):
                    await self._call(
                        self.snapshots.Remove,
                        snapshots.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
                    )
                if "already exists" not in str(err):
                    raise ImagePullError(f"unpack {resolved.ref.name}: {err}") from None
            parent = chain

    # ------------------------------------------------------------ containers

    async def create(self, config: ContainerConfig) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self._call(
                self.containers.Get, containers.GetContainerRequest(id=config.container_id)
            )
            return  # exists: creating is idempotent
        info = await self._image(config.image)
        # Under a lease from the snapshot's making until the container record refers to
        # it: containerd's garbage collector removes unreferenced snapshots, and it may
        # run in between (another pull or removal, on any node sharing this containerd).
        async with self._lease("create") as lease:
            try:
                prepared = await self._call(
                    self.snapshots.Prepare,
                    snapshots.PrepareSnapshotRequest(
                        snapshotter=self.snapshotter, key=config.container_id, parent=info.chain_id
                    ),
                    lease,
                )
                mounts = list(prepared.mounts)
            except RuntimeFailure as err:
                if "already exists" not in str(err):
                    raise
                mounts = list(
                    (
                        await self._call(
                            self.snapshots.Mounts,
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
                cgroups_path=f"/shoal/{self.namespace}/{config.container_id}",
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
                runtime=containers.Container.Runtime(name=RUNC),
                spec=any_pb2.Any(type_url=SPEC_TYPE, value=json.dumps(spec).encode()),
                snapshotter=self.snapshotter,
                snapshot_key=config.container_id,
            )
            (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
            await self._call(
                self.containers.Create, containers.CreateContainerRequest(container=record), lease
            )

    async def start(self, container_id: str) -> int:
        got = await self._call(self.containers.Get, containers.GetContainerRequest(id=container_id))
        mounts = (
            await self._call(
                self.snapshots.Mounts,
                snapshots.MountsRequest(
                    snapshotter=got.container.snapshotter, key=got.container.snapshot_key
                ),
            )
        ).mounts
        log_uri = got.container.labels.get("shoal.log.uri", "")
        with contextlib.suppress(ContainerNotFound):
            # A task left from a start that failed half-way: clear it first.
            existing = await self._call(self.tasks.Get, tasks.GetRequest(container_id=container_id))
            if existing.process.status == task_pb2.RUNNING:
                return int(existing.process.pid)
            await self._call(self.tasks.Delete, tasks.DeleteTaskRequest(container_id=container_id))
        created = await self._call(
            self.tasks.Create,
            tasks.CreateTaskRequest(
                container_id=container_id, rootfs=mounts, stdout=log_uri, stderr=log_uri
            ),
        )
        await self._call(self.tasks.Start, tasks.StartRequest(container_id=container_id))
        return int(created.pid)

    async def wait(self, container_id: str) -> int:
        # No deadline: a container may run for months.
        resp = await self._call(
            self.tasks.Wait, tasks.WaitRequest(container_id=container_id), deadline_s=None
        )
        return int(resp.exit_status)

    async def stop(self, container_id: str, grace_s: float) -> None:
        try:
            got = await self._call(self.tasks.Get, tasks.GetRequest(container_id=container_id))
        except ContainerNotFound:
            return
        if got.process.status != task_pb2.RUNNING:
            return
        waiter = asyncio.ensure_future(self.wait(container_id))
        try:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self._call(
                    self.tasks.Kill,
                    tasks.KillRequest(container_id=container_id, signal=signal.SIGTERM, all=True),
                )
            try:
                await asyncio.wait_for(asyncio.shield(waiter), grace_s)
                return
            except TimeoutError:
                log.info("container %s ignored SIGTERM for %.0fs: SIGKILL", container_id, grace_s)
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self._call(
                    self.tasks.Kill,
                    tasks.KillRequest(container_id=container_id, signal=signal.SIGKILL, all=True),
                )
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await asyncio.wait_for(asyncio.shield(waiter), 10)
        finally:
            waiter.cancel()
            with contextlib.suppress(BaseException):
                await waiter

    async def remove(self, container_id: str) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self._call(self.tasks.Delete, tasks.DeleteTaskRequest(container_id=container_id))
        with contextlib.suppress(ContainerNotFound):
            await self._call(
                self.containers.Delete, containers.DeleteContainerRequest(id=container_id)
            )
        with contextlib.suppress(ContainerNotFound):
            await self._call(
                self.snapshots.Remove,
                snapshots.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=container_id),
            )

    async def state(self, container_id: str) -> ContainerState | None:
        try:
            got = await self._call(self.tasks.Get, tasks.GetRequest(container_id=container_id))
        except ContainerNotFound:
            try:
                await self._call(
                    self.containers.Get, containers.GetContainerRequest(id=container_id)
                )
            except ContainerNotFound:
                return None
            return ContainerState(container_id, "created")
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
        resp = await self._call(self.containers.List, containers.ListContainersRequest())
        return [c.id for c in resp.containers]

    async def exec(self, container_id: str, argv: builtins.list[str], timeout_s: float) -> int:
        got = await self._call(self.containers.Get, containers.GetContainerRequest(id=container_id))
        process = json.loads(got.container.spec.value)["process"]
        process["args"] = argv
        exec_id = f"exec-{uuid.uuid4().hex[:12]}"
        await self._call(
            self.tasks.Exec,
            tasks.ExecProcessRequest(
                container_id=container_id,
                exec_id=exec_id,
                spec=any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps(process).encode()),
            ),
        )
        try:
            await self._call(
                self.tasks.Start, tasks.StartRequest(container_id=container_id, exec_id=exec_id)
            )
            resp = await asyncio.wait_for(
                self._call(
                    self.tasks.Wait,
                    tasks.WaitRequest(container_id=container_id, exec_id=exec_id),
                    deadline_s=None,
                ),
                timeout_s,
            )
            return int(resp.exit_status)
        except TimeoutError:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self._call(
                    self.tasks.Kill,
                    tasks.KillRequest(
                        container_id=container_id, exec_id=exec_id, signal=signal.SIGKILL
                    ),
                )
            return -1
        finally:
            with contextlib.suppress(ContainerNotFound, RuntimeFailure):
                await self._call(
                    self.tasks.DeleteProcess,
                    tasks.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                )
