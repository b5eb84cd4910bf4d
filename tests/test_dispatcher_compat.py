"""An agent from before DispatcherBatch (it does not say `takes_batches` when it
registers) gets the manager's messages one by one, as it always did; a current agent
gets them batched. Real manager and etcd, a raw session over the node's mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shoal.lab.procs import ManagerProcess, control
from shoal.pki.join import join
from shoal.proto import control_pb2 as api
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import dispatcher_pb2_grpc as dpb_grpc

pytestmark = pytest.mark.integration


async def first_messages(
    m: ManagerProcess, hostname: str, takes_batches: bool
) -> list[dpb.DispatcherMessage]:
    token = control(m).GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
    ident = await join(m.addr, token, hostname)
    channel = ident.channel(m.addr)
    stop = asyncio.Event()

    async def requests() -> AsyncIterator[dpb.AgentMessage]:
        yield dpb.AgentMessage(register=dpb.Register(takes_batches=takes_batches))
        await stop.wait()

    try:
        call = dpb_grpc.DispatcherStub(channel).Session(requests(), timeout=20)
        got: list[dpb.DispatcherMessage] = []
        async for msg in call:
            got.append(msg)
            kinds = [k for g in got for k in kinds_of(g)]
            if "peers" in kinds:  # the start is complete
                break
        return got
    finally:
        stop.set()
        await channel.close()


def kinds_of(msg: dpb.DispatcherMessage) -> list[str]:
    if msg.HasField("batch"):
        return [str(m.WhichOneof("msg")) for m in msg.batch.messages]
    return [str(msg.WhichOneof("msg"))]


async def test_old_agents_get_single_messages_current_ones_batches(
    manager: ManagerProcess,
) -> None:
    old = await first_messages(manager, "old-agent", takes_batches=False)
    assert [m.WhichOneof("msg") for m in old] == ["session", "services", "assignments", "peers"]
    (start,) = await first_messages(manager, "new-agent", takes_batches=True)
    assert kinds_of(start) == ["session", "services", "assignments", "peers"]
    assert start.HasField("batch")
