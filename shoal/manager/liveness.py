"""Node liveness across managers (leader only).

A ready node must have an agent session on some manager (a `sessions/<node>`
key, see manager/presence). When the key goes, because the session ended or
because its manager died and the lease ran out, the node is marked down after
a grace period unless its agent has registered again somewhere meanwhile. A
node that was ready when this leader took over and has no session at all gets
the longer heartbeat window: its agent may still be reconnecting after a
manager restart.

Heartbeats within a live session are the dispatcher's job; this covers what no
single dispatcher can see.
"""

from __future__ import annotations

import asyncio
import logging

from shoal import defaults
from shoal.manager.store import Cache, Conflict, Fence, Kind, Store, Update
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# A node whose session ended is marked down after this, unless it reconnects:
# long enough for an agent restart or a switch to another manager (its
# containers keep running), short enough to move the tasks of a dead node in
# seconds.
SESSION_GRACE_S = 3.0


class NodeLiveness:
    def __init__(self, store: Store, cache: Cache) -> None:
        self.store = store
        self.cache = cache
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._expired: asyncio.Queue[str] = asyncio.Queue()

    async def run(self, fence: Fence) -> None:
        try:
            with self.cache.session_changes() as feed:
                await self.cache.sync()
                self._check_all(self._takeover_grace_s())
                waiter = asyncio.ensure_future(self._mark_down_expired(fence))
                try:
                    while True:
                        node_id = await feed.get()
                        if waiter.done():
                            waiter.result()
                        if node_id is None:
                            self._check_all(SESSION_GRACE_S)
                        else:
                            self._check(node_id, SESSION_GRACE_S)
                finally:
                    waiter.cancel()
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    def _takeover_grace_s(self) -> float:
        clusters = self.cache.list_objects(Kind.CLUSTER)
        spec = clusters[0].spec.dispatcher if clusters else defaults.cluster_spec().dispatcher
        period = spec.heartbeat_period_ms or defaults.HEARTBEAT_PERIOD_MS
        misses = spec.heartbeat_misses or defaults.HEARTBEAT_MISSES
        return float(period * misses / 1000)

    def _check_all(self, grace_s: float) -> None:
        for node in self.cache.list_objects(Kind.NODE):
            self._check(node.id, grace_s)

    def _check(self, node_id: str, grace_s: float) -> None:
        if self.cache.session_owner(node_id) is not None:
            timer = self._timers.pop(node_id, None)
            if timer is not None:
                timer.cancel()
            return
        node = self.cache.get(Kind.NODE, node_id)
        if node is None or node.status.state != pb.NODE_READY or node_id in self._timers:
            return
        self._timers[node_id] = asyncio.get_running_loop().call_later(
            grace_s, self._expired.put_nowait, node_id
        )

    async def _mark_down_expired(self, fence: Fence) -> None:
        while True:
            node_id = await self._expired.get()
            self._timers.pop(node_id, None)
            await self.cache.sync()
            if self.cache.session_owner(node_id) is not None:
                continue
            node = self.cache.get(Kind.NODE, node_id)
            if node is None or node.status.state != pb.NODE_READY:
                continue
            down = pb.Node()
            down.CopyFrom(node)
            down.status.state = pb.NODE_DOWN
            down.status.message = "session lost"
            try:
                await self.store.batch([Update(down)], fence)
                log.warning("node %s: no agent session for its grace period; marked down", node_id)
            except Conflict:
                # Changed meanwhile (it may have re-registered): look again.
                self._check(node_id, 0.0)
