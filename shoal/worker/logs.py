"""Serving task logs to the manager: the log file's tail, then (with follow) what gets appended.

Following uses inotify (through libc) so an idle log costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.proto import dispatcher_pb2 as dpb

CHUNK = 64 * 1024
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_DELETE_SELF = 0x00000400
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

Send = Callable[[dpb.LogChunk], Awaitable[None]]


class _Inotify:
    """One inotify watch on a file; `changed()` returns when it was written to."""

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE_SELF
        if self._libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        self._event.set()

    async def changed(self) -> None:
        await self._event.wait()
        self._event.clear()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def _tail_offset(path: Path, lines: int) -> int:
    """Offset of the start of the last `lines` lines (0 = whole file)."""
    if lines <= 0:
        return 0
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos, found = size, 0
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            # A trailing newline ends the last line; it does not start one.
            end = len(block) - 1 if pos + len(block) == size and block.endswith(b"\n") else None
            idx = len(block) if end is None else end
            while True:
                idx = block.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
                found += 1
                if found == lines:
                    return pos + idx + 1
    return 0


async def stream_log(task_id: str, path: Path, request: dpb.LogRequest, send: Send) -> None:
    """Sends the task's log, then what is appended while following."""
    if not path.exists():
        return
    watch = _Inotify(path) if request.follow else None
    try:
        with open(path, "rb") as f:
            f.seek(_tail_offset(path, request.tail))
            while True:
                data = f.read(CHUNK)
                if data:
                    await send(
                        dpb.LogChunk(request_id=request.request_id, task_id=task_id, data=data)
                    )
                    continue
                if watch is None:
                    return
                await watch.changed()
    finally:
        if watch is not None:
            watch.close()


async def serve_logs(request: dpb.LogRequest, logs_dir: Path, known: set[str], send: Send) -> None:
    """Answers one LogRequest for several tasks; ends with a `done` chunk unless following."""
    tasks = [t for t in request.task_ids if t in known]
    try:
        await asyncio.gather(*(stream_log(t, logs_dir / f"{t}.log", request, send) for t in tasks))
    finally:
        with contextlib.suppress(Exception):
            await send(dpb.LogChunk(request_id=request.request_id, done=True))
