"""grpc streams fed by a task of ours: nothing is left pending when a call ends by itself.

A real gRPC server on loopback ends each bidirectional call after its first request
(as a manager or etcd member that goes away); the client's requests wait on a queue
nothing feeds any more. Given that iterator itself, grpc.aio leaves its consumer task
blocked on the queue, later destroyed while pending; through `feeding` no task of the
call outlives it, with or without a client interceptor (etcd's auth and timers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from shoal.grpcstreams import feeding

METHOD = "/shoaltest.Echo/Bidi"


class PassThrough(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(details, request_iterator)


async def _ends_after_one(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(_ends_after_one)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("shoaltest.Echo", {"Bidi": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@pytest.mark.parametrize("intercepted", [False, True])
async def test_a_call_that_ends_by_itself_leaves_no_task(
    server_port: int, intercepted: bool
) -> None:
    interceptors = [PassThrough()] if intercepted else None
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server_port}", interceptors=interceptors
    ) as channel:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queue.put_nowait(b"hello")

        async def requests() -> AsyncIterator[bytes]:
            while True:
                yield await queue.get()

        before = asyncio.all_tasks()
        call = channel.stream_stream(METHOD)()
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with feeding(call, requests()):
                async for resp in call:
                    got.append(resp)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert got == [b"hello"]
        for _ in range(3):
            await asyncio.sleep(0)  # a few turns for tasks that end by themselves
        new = [t for t in asyncio.all_tasks() - before if not t.done()]
        left = [t for t in new if "aio/server" not in repr(t)]  # the server's own
        assert not left, f"left pending after the call: {left}"
