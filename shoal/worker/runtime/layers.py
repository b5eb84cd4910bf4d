"""Gzip layers inflated while they download, as Docker's own pull does: containerd's
diff service then applies a plain tar, not decompressing it itself on the one
thread that unpacks the layers one after the other. The inflating runs in threads
(zlib lets go of the GIL), on another core, overlapping the layers below it."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import zlib
from collections.abc import AsyncIterator

from shoal.worker.runtime.base import ImagePullError

GZIP_LAYERS = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
# Inflated chunks waiting for containerd: bounds the memory a fast download takes.
QUEUED = 8
GZIP = 16 + zlib.MAX_WBITS


class Turns:
    """Who works on a chunk next: the layers download in parallel, but when several
    have data, the lowest goes first (the unpacking waits for it); the others
    progress while it waits for the network."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, index: int) -> AsyncIterator[None]:
        if self._busy:
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (index, next(self._order), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._next()  # handed the turn as it was cancelled: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        self._busy = False
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                self._busy = True
                fut.set_result(None)
                return


class Inflater:
    """Tees a gzip stream: the chunks pass on as they are (to be stored as the layer's
    blob) and, inflated, come out of inflated() (to be stored as the tar to apply).
    An error in the source reaches both."""

    def __init__(self, turns: Turns, index: int) -> None:
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED)
        self._z = zlib.decompressobj(GZIP)
        self._turns = turns
        self._index = index

    async def tee(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                async with self._turns.turn(self._index):
                    yield chunk
                    await self._queue.put(await asyncio.to_thread(self._inflate, chunk))
            if not self._z.eof:
                raise ImagePullError("the layer's gzip stream is cut short")
        except zlib.error as err:
            failed = ImagePullError(f"the layer is not valid gzip: {err}")
            self._fail(failed)
            raise failed from None
        except BaseException as err:
            self._fail(err)
            raise
        await self._queue.put(None)

    def _fail(self, err: BaseException) -> None:
        # With the queue full, the pull cancels the inflated stream's writer itself.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(err)

    async def inflated(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item if isinstance(item, ImagePullError) else ImagePullError(str(item))
            if item:
                yield item

    def _inflate(self, data: bytes) -> bytes:
        if self._z.eof:  # the last member ended with the previous chunk
            self._z = zlib.decompressobj(GZIP)
        out = [self._z.decompress(data)]
        while self._z.eof and self._z.unused_data:  # gzip of several members (pigz)
            rest = self._z.unused_data
            self._z = zlib.decompressobj(GZIP)
            out.append(self._z.decompress(rest))
        return b"".join(out)
