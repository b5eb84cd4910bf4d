"""A task's secrets and configs on the node: fetched, held in memory, mounted.

The agent asks its manager for a task's files (TaskFiles, over the node's own
mTLS certificate: refused unless this node runs the task) just before the
container is created, writes them into a tmpfs of the task's own (memory
only, never the state dir's disk) and bind-mounts each file read-only at its
target with its uid/gid/mode. The tmpfs is unmounted when the task ends or is
removed. Nothing is written to the task records (taskdb holds references only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import dispatcher_pb2_grpc as dpb_grpc
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.base import MountConfig

log = logging.getLogger(__name__)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
FETCH_TIMEOUT_S = 15.0
# Where per-task tmpfs mounts live: /run is itself memory on the hosts Shoal runs on,
# and it is outside every state dir.
DEFAULT_ROOT = Path("/run/shoal")

Fetch = Callable[[str], Awaitable[dpb.TaskFilesResponse]]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class FilesUnavailable(Exception):
    """The task's secrets/configs could not be obtained (the reason is shown on the task)."""


def _mount_tmpfs(path: Path, size: int) -> None:
    opts = f"mode=0700,size={size}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags, opts) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {path}: {os.strerror(err)}")


def _umount(path: Path) -> None:
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(err, f"umount {path}: {os.strerror(err)}")


def wants_files(task: pb.Task) -> bool:
    c = task.spec.container
    return bool(c.secrets or c.configs)


class TaskFiles:
    """Per-task tmpfs mounts under root/<task id>."""

    def __init__(self, root: Path, fetch: Fetch) -> None:
        self.root = root
        self.fetch = fetch

    def dir_of(self, task_id: str) -> Path:
        return self.root / task_id

    async def prepare(self, task: pb.Task) -> list[MountConfig]:
        """Fetches and mounts the task's files; the bind mounts its container needs."""
        if not wants_files(task):
            return []
        try:
            resp = await self.fetch(task.id)
        except grpc.aio.AioRpcError as err:
            raise FilesUnavailable(f"secrets/configs: {err.details()}") from None
        return await asyncio.to_thread(self._materialise, task.id, list(resp.files))

    def _materialise(self, task_id: str, files: list[dpb.TaskFile]) -> list[MountConfig]:
        d = self.dir_of(task_id)
        self._release(task_id)  # a half-made one from a crash
        d.mkdir(parents=True, mode=0o700)
        # Room for the files plus inode/page slack; a tmpfs is charged as used.
        size = sum(len(f.data) for f in files) + 64 * 1024 * (len(files) + 1)
        _mount_tmpfs(d, size)
        mounts: list[MountConfig] = []
        try:
            for i, f in enumerate(files):
                path = d / f"{i}-{f.kind}-{f.name}"
                fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
                try:
                    os.write(fd, f.data)
                    os.fchown(fd, f.uid, f.gid)
                    os.fchmod(fd, f.mode or 0o444)
                finally:
                    os.close(fd)
                mounts.append(MountConfig("file", str(path), f.target, readonly=True))
        except OSError:
            self._release(task_id)
            raise
        return mounts

    async def release(self, task_id: str) -> None:
        await asyncio.to_thread(self._release, task_id)

    def _release(self, task_id: str) -> None:
        d = self.dir_of(task_id)
        if not d.exists():
            return
        try:
            _umount(d)
            for p in d.iterdir():  # only if the tmpfs was never mounted
                p.unlink()
            d.rmdir()
            with contextlib.suppress(OSError):  # the node's dir too, once it is empty
                self.root.rmdir()
        except OSError as err:
            log.warning("task %s: removing its secrets mount failed: %s", task_id, err)


async def fetch_over(
    channel_for: Callable[[], grpc.aio.Channel], task_id: str
) -> dpb.TaskFilesResponse:
    """One TaskFiles call on a fresh channel to the current manager (node certificate)."""
    channel = channel_for()
    try:
        resp: dpb.TaskFilesResponse = await dpb_grpc.DispatcherStub(channel).TaskFiles(
            dpb.TaskFilesRequest(task_id=task_id), timeout=FETCH_TIMEOUT_S
        )
        return resp
    finally:
        await channel.close()
