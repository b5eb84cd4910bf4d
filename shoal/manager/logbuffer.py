"""A bounded buffer between an agent's log chunks and one `service logs` reader.

The agent's session must never wait for a slow reader (heartbeats and status
reports share it), so a reader more than MAX_BYTES behind loses chunks, and then
reads one line saying how much it missed: dropping, visibly, not backpressure.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shoal.proto import dispatcher_pb2 as dpb

MAX_BYTES = 4 * 1024 * 1024


class LogBuffer:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[dpb.LogChunk | None] = deque()
        self._bytes = 0
        self._dropped: dict[str, int] = {}
        self._ready = asyncio.Event()

    def put(self, chunk: dpb.LogChunk | None) -> None:
        """Never blocks: data past the limit is counted and dropped; control chunks
        (done, error, the end marker None) always go in."""
        if chunk is not None and chunk.data and not chunk.done and not chunk.error:
            if self._bytes + len(chunk.data) > self.max_bytes:
                self._dropped[chunk.task_id] = self._dropped.get(chunk.task_id, 0) + len(chunk.data)
                return
            self._bytes += len(chunk.data)
        self._items.append(chunk)
        self._ready.set()

    async def get(self) -> dpb.LogChunk | None:
        """The next chunk; once the reader has caught up with what was kept, a line
        saying how much it missed."""
        while True:
            if self._dropped and self._bytes == 0:
                task_id, n = self._dropped.popitem()
                return dpb.LogChunk(
                    task_id=task_id,
                    data=f"[shoal: {n} bytes of logs dropped: this reader fell behind]\n".encode(),
                )
            if self._items:
                chunk = self._items.popleft()
                if chunk is not None and chunk.data and not chunk.done and not chunk.error:
                    self._bytes -= len(chunk.data)
                return chunk
            self._ready.clear()
            await self._ready.wait()
