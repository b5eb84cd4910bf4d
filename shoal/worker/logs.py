"""Serving task logs to the manager: the log file's tail, then (with follow) what gets appended.

Following uses inotify (through libc) so an idle log costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from shoal.proto import dispatcher_pb2 as dpb
from shoal.worker.inotify import Inotify

CHUNK = 64 * 1024

Send = Callable[[dpb.LogChunk], Awaitable[None]]


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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


async def stream_log(task_id: str, path: Path, request: dpb.LogRequest, send: Send) -> None:
    """Sends the task's log, then what is appended while following, across rotations
    (logrotate.py copies the file to NAME.1 and truncates it)."""
    if not path.exists():
        return

    async def chunk(data: bytes) -> None:
        await send(dpb.LogChunk(request_id=request.request_id, task_id=task_id, data=data))

    watch = Inotify(path) if request.follow else None
    copy = path.with_name(f"{path.name}.1")
    copied = _identity(copy)
    try:
        with open(path, "rb") as f:
            f.seek(_tail_offset(path, request.tail))
            while True:
                data = f.read(CHUNK)
                if data:
                    await chunk(data)
                    continue
                if watch is None:
                    return
                await watch.changed()
                if _identity(copy) != copied:
                    # Rotated: the rest of what we were reading is in the copy.
                    copied = _identity(copy)
                    with contextlib.suppress(FileNotFoundError), open(copy, "rb") as old:
                        old.seek(f.tell())
                        while rest := old.read(CHUNK):
                            await chunk(rest)
                    f.seek(0)
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
