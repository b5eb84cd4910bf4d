"""An agent whose session the manager never answers gives it up and registers again,
instead of waiting on the open stream for good (a 5,000-node mass join left one
agent so, on a live connection, after the manager had marked its node down)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import dispatcher_pb2_grpc as dpb_grpc
from shoal.proto import objects_pb2 as pb
from shoal.worker import session as session_module
from shoal.worker.runtime.simulated import SimulatedRuntime
from shoal.worker.session import Session
from shoal.worker.worker import Worker


class SilentDispatcher(dpb_grpc.DispatcherServicer):
    """Takes the Register, then says nothing; the second session is answered."""

    def __init__(self) -> None:
        self.registers = 0
        self.answered = asyncio.Event()

    async def Session(  # type: ignore[override]
        self, requests: AsyncIterator[dpb.AgentMessage], context: Any
    ) -> AsyncIterator[dpb.DispatcherMessage]:
        first = await anext(aiter(requests))
        assert first.WhichOneof("msg") == "register"
        self.registers += 1
        if self.registers == 1:
            await asyncio.Event().wait()  # never answers
        yield dpb.DispatcherMessage(session=dpb.SessionInfo(node_id="n1"))
        self.answered.set()
        await asyncio.Event().wait()


class PlainIdentity:
    def channel(self, addr: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(addr)


async def _connect_against_silent_manager(tmp_path: Path, identity: Any) -> SilentDispatcher:
    """Runs an agent's session against SilentDispatcher until it is connected."""
    server = grpc.aio.server()
    dispatcher = SilentDispatcher()
    dpb_grpc.add_DispatcherServicer_to_server(dispatcher, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    worker = Worker(SimulatedRuntime(), tmp_path, lambda task_id, status: None)
    session = Session(
        lambda: identity, [f"127.0.0.1:{port}"], lambda: pb.NodeDescription(hostname="h1")
    )
    session.worker = worker
    running = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), 10)
        await asyncio.wait_for(dispatcher.answered.wait(), 5)
        return dispatcher
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        for leftover in list(session._closing):
            leftover.cancel()
        await worker.close()
        await server.stop(None)


def test_an_unanswered_session_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "SESSION_START_TIMEOUT_S", 0.5)
    dispatcher = asyncio.run(_connect_against_silent_manager(tmp_path, PlainIdentity()))
    assert dispatcher.registers == 2


class HangingCloseIdentity:
    """Channels whose close never returns (the first one only)."""

    def __init__(self) -> None:
        self.made = 0

    def channel(self, addr: str) -> grpc.aio.Channel:
        self.made += 1
        channel = grpc.aio.insecure_channel(addr)
        if self.made == 1:

            async def close(grace: float | None = None) -> None:
                await asyncio.Event().wait()

            channel.close = close  # type: ignore[method-assign]
        return channel


def test_a_close_that_hangs_does_not_keep_the_agent_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "SESSION_START_TIMEOUT_S", 0.5)
    monkeypatch.setattr(session_module, "SESSION_CLOSE_TIMEOUT_S", 0.5)
    identity = HangingCloseIdentity()
    dispatcher = asyncio.run(_connect_against_silent_manager(tmp_path, identity))
    assert dispatcher.registers == 2 and identity.made == 2
