"""inotify through libc: wait for a file or a directory to change without polling."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_DELETE_SELF = 0x00000400
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of name


class Inotify:
    """One watch; `changed()` returns the names written to since the last call (for a
    directory: the files in it; for a file: [""])."""

    def __init__(self, path: Path, mask: int = IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE_SELF) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if self._libc.inotify_add_watch(self.fd, str(path).encode(), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path} failed")
        self._names: set[str] = set()
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                buf = os.read(self.fd, 65536)
                if not buf:
                    break
                pos = 0
                while pos + _EVENT.size <= len(buf):
                    _, _, _, length = _EVENT.unpack_from(buf, pos)
                    raw = buf[pos + _EVENT.size : pos + _EVENT.size + length]
                    self._names.add(raw.rstrip(b"\0").decode(errors="replace"))
                    pos += _EVENT.size + length
        self._event.set()

    async def changed(self) -> set[str]:
        await self._event.wait()
        self._event.clear()
        names, self._names = self._names, set()
        return names

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
