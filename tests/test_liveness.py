"""Node liveness on a real etcd: a node marked down while its session key could not be
written (an etcd failover, found by the chaos test: three nodes stayed down with
their agents connected) is ready again once the key is there."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shoal.manager.election import Election
from shoal.manager.liveness import NodeLiveness
from shoal.manager.presence import Presence
from shoal.manager.store import Cache, Create, Kind, Store
from shoal.proto import objects_pb2 as pb

from .helpers import make_node, until

pytestmark = pytest.mark.integration


async def test_a_down_node_with_a_session_again_is_ready(store: Store, cache: Cache) -> None:
    back = make_node("back")
    back.status.state = pb.NODE_DOWN
    back.status.message = "session lost"
    await store.batch([Create(back)])
    await cache.sync()
    presence = Presence(store, "m-test", "127.0.0.1:1", 3)
    writing = asyncio.create_task(presence.run())
    leading = asyncio.create_task(
        Election(store, "m-test", ttl_s=3).run(NodeLiveness(store, cache).run)
    )

    def state(node: pb.Node) -> int:
        return int(cache.get(Kind.NODE, node.id).status.state)

    try:
        # A session key appears for the node that was marked down: it is ready again.
        presence.claim_session(back.id)
        await until(cache, lambda: state(back) == pb.NODE_READY, 10)
        assert cache.get(Kind.NODE, back.id).status.message == ""
    finally:
        for t in (leading, writing):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
