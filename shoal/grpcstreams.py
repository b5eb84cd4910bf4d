"""Bidirectional gRPC calls whose requests are written by a task of our own.

Given a request iterator, grpc.aio consumes it in a task of its own that it cancels
only when the call is cancelled while still live: when the call ends by itself (the
manager or etcd went away), that task stays blocked in the iterator (waiting on a
queue that nothing feeds any more) and is later garbage collected while pending
("Task was destroyed but it is pending!", then "aclose(): asynchronous generator is
already running"). Here the call is made without an iterator and our own writer
task feeds it with `write()`; leaving the block cancels and awaits that task and
ends the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio

from shoal.aiotasks import cancel_and_wait


@contextlib.asynccontextmanager
async def feeding(call: Any, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Writes `requests` into `call` (a stream-stream call made without a request
    iterator) while the block runs; yields the call, to read its responses."""
    writer = start_feeding(call, requests)
    try:
        yield call
    finally:
        await stop_feeding(call, writer)


def start_feeding(call: Any, requests: AsyncIterator[Any]) -> asyncio.Task[None]:
    """`feeding` for a call read across a longer body: stop it with `stop_feeding`."""
    return asyncio.create_task(_write_all(call, requests), name="grpc requests")


async def stop_feeding(call: Any, writer: asyncio.Task[None]) -> None:
    call.cancel()
    await cancel_and_wait([writer])
    # A call made through an interceptor turns write() into a request iterator of its
    # own, fed by a queue, for which grpc.aio has the same task: the end of the
    # requests, said once the call is over, lets that task finish too.
    with contextlib.suppress(Exception):
        await call.done_writing()


async def _write_all(call: Any, requests: AsyncIterator[Any]) -> None:
    try:
        async for request in requests:
            await call.write(request)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call ended: whoever reads its responses learns why
    finally:
        aclose = getattr(requests, "aclose", None)
        if aclose is not None:
            await aclose()
