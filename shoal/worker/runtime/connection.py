"""One connection to containerd: its gRPC stubs, the node's containerd namespace
on every call, containerd errors mapped to runtime errors, and leases."""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio

from shoal.proto.containerd import containers_pb2_grpc as containers_grpc
from shoal.proto.containerd import content_pb2_grpc as content_grpc
from shoal.proto.containerd import diff_pb2_grpc as diff_grpc
from shoal.proto.containerd import images_pb2_grpc as images_grpc
from shoal.proto.containerd import leases_pb2 as leases
from shoal.proto.containerd import leases_pb2_grpc as leases_grpc
from shoal.proto.containerd import snapshots_pb2_grpc as snapshots_grpc
from shoal.proto.containerd import tasks_pb2_grpc as tasks_grpc
from shoal.worker.runtime.base import ContainerNotFound, RuntimeFailure, RuntimeUnavailable

CALL_TIMEOUT_S = 30.0
# containerd not answering is a transport problem, never the task's.
TRANSPORT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Containerd:
    def __init__(self, socket: str, namespace: str) -> None:
        self.namespace = namespace
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

    def md(self, lease: str = "") -> list[tuple[str, str]]:
        """Call metadata: the namespace, and the lease new content is made under."""
        md = [("containerd-namespace", self.namespace)]
        if lease:
            md.append(("containerd-lease", lease))
        return md

    async def call(
        self, fn: Any, request: Any, lease: str = "", deadline_s: float | None = CALL_TIMEOUT_S
    ) -> Any:
        """A unary call that waits for containerd to be there (a restart) within its
        deadline; NOT_FOUND becomes ContainerNotFound, a transport error
        RuntimeUnavailable, any other error RuntimeFailure."""
        try:
            return await fn(
                request, metadata=self.md(lease), timeout=deadline_s, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise ContainerNotFound(err.details() or "not found") from None
            why = f"containerd: {err.details() or err.code().name}"
            if err.code() in TRANSPORT:
                raise RuntimeUnavailable(why) from None
            raise RuntimeFailure(why) from None

    @contextlib.asynccontextmanager
    async def lease(self, purpose: str) -> AsyncIterator[str]:
        """A containerd lease: what is made under it is safe from containerd's garbage
        collector until the lease goes (or expires, should we die holding it)."""
        lease = f"shoal-{purpose}-{uuid.uuid4().hex}"
        expire = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
        await self.call(
            self.leases.Create,
            leases.CreateRequest(id=lease, labels={"containerd.io/gc.expire": expire}),
        )
        failed = True
        try:
            yield lease
            failed = False
        finally:
            with contextlib.suppress(RuntimeFailure, RuntimeUnavailable):
                # If containerd is away the lease expires by itself. After a failure,
                # containerd collects what the lease alone kept (a failed pull's
                # layers) before answering: nothing of it stays behind.
                await self.call(self.leases.Delete, leases.DeleteRequest(id=lease, sync=failed))

    async def close(self) -> None:
        await self.channel.close()
