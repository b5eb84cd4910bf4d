"""Rotation of task log files (`swarmd worker --log-max-size 20M --log-max-files 5`,
the defaults of Docker's `local` log driver).

The runc shim keeps the log file open and appends to it, so a file is rotated by
copy and truncate: `T.log` is copied to `T.log.1` (older ones shift up, the oldest
goes) and truncated. Writes are noticed through inotify on the logs directory, not
by polling; a file is looked at no more than once per CHECK_EVERY_S.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from shoal.worker.inotify import IN_MODIFY, Inotify

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_FILES = 5
CHECK_EVERY_S = 1.0
# Without inotify, how often every log file's size is looked at.
POLL_EVERY_S = 10.0


def rotated(path: Path, max_files: int) -> list[Path]:
    """The file's rotated copies, newest first (T.log.1, T.log.2, ...)."""
    return [path.with_name(f"{path.name}.{i}") for i in range(1, max_files)]


def rotate(path: Path, max_files: int) -> None:
    """Copy-and-truncate `path`, keeping at most `max_files` files in all."""
    copies = rotated(path, max_files)
    if copies:
        for older, newer in zip(reversed(copies[1:]), reversed(copies[:-1]), strict=True):
            if newer.exists():
                newer.replace(older)
        shutil.copyfile(path, copies[0])
    with open(path, "r+b") as f:
        f.truncate(0)


def remove_with_rotated(path: Path, max_files: int) -> None:
    for p in (path, *rotated(path, max_files)):
        p.unlink(missing_ok=True)


class LogRotator:
    def __init__(self, logs_dir: Path, max_bytes: int, max_files: int) -> None:
        self.logs_dir = logs_dir
        self.max_bytes = max_bytes
        self.max_files = max(1, max_files)
        self._checked: dict[str, float] = {}

    def check(self, name: str) -> None:
        if not name.endswith(".log"):
            return
        now = time.monotonic()
        if now - self._checked.get(name, 0.0) < CHECK_EVERY_S:
            return
        self._checked[name] = now
        path = self.logs_dir / name
        try:
            if path.stat().st_size > self.max_bytes:
                rotate(path, self.max_files)
                log.info("rotated %s", path)
        except FileNotFoundError:
            self._checked.pop(name, None)  # the task is gone

    async def run(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            watch = Inotify(self.logs_dir, IN_MODIFY)
        except OSError as err:
            # Out of inotify instances (fs.inotify.max_user_instances, 128 by default, is
            # shared by all of a user's programs): sizes are looked at every
            # POLL_EVERY_S instead of failing, and being restarted, over and over.
            log.warning("log rotation: no inotify (%s); checking every %.0fs", err, POLL_EVERY_S)
            await self.poll()
            return
        try:
            while True:
                for name in await watch.changed():
                    self.check(name)
                # A file written to within CHECK_EVERY_S of its last check is looked at
                # again at a later write: it can exceed the limit by one interval's writes.
        finally:
            watch.close()

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_EVERY_S)
            for path in self.logs_dir.glob("*.log"):
                self.check(path.name)
