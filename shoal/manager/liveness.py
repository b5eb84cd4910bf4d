"""Node liveness across managers (leader only).

A ready node must have an agent session on some manager (a `sessions/<node>`
key, see manager/presence). When the key goes, the node is marked down after a
grace period unless its agent has registered again somewhere meanwhile:

- a live manager saw the session end (the connection closed, or keepalive found
  the host gone): SESSION_GRACE_S; an agent that stops cleanly says so, and its
  manager keeps the key for the heartbeat window (see dispatcher);
- its manager died (the key went with that manager's lease): the heartbeat
  window, since the agents may not have noticed yet and must reconnect;
- a ready node without a session when this leader took over: the heartbeat
  window too (its agent may still be reconnecting after a manager restart).

Heartbeats within a live session are the dispatcher's job; this covers what no
single dispatcher can see.
"""

from __future__ import annotations

import asyncio
import logging

from shoal import defaults
from shoal.aiotasks import cancel_and_wait
from shoal.clock import now_ms
from shoal.manager.store import Cache, Conflict, Fence, Kind, Store, Update
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# A node whose session a live manager saw end (not a clean stop) is marked down
# after this unless it registers again: a crashed agent or a vanished host. Its
# tasks move in about this long plus the keepalive that noticed the loss.
SESSION_GRACE_S = 1.0


class NodeLiveness:
    def __init__(self, store: Store, cache: Cache) -> None:
        self.store = store
        self.cache = cache
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._expired: asyncio.Queue[str] = asyncio.Queue()
        # The manager each node's session was last seen with.
        self._owners: dict[str, str] = {}

    async def run(self, fence: Fence) -> None:
        try:
            with self.cache.session_changes() as feed:
                await self.cache.sync()
                self._check_all(self._window_s())
                waiter = asyncio.ensure_future(self._mark_down_expired(fence))
                try:
                    while True:
                        node_id = await feed.get()
                        if waiter.done():
                            waiter.result()
                        if node_id is None:
                            self._check_all(self._window_s())
                            continue
                        previous = self._owners.get(node_id)
                        # Gone with a dead manager's lease: its agents need time to notice.
                        orphaned = previous is not None and previous not in self.cache.managers()
                        self._check(node_id, self._window_s() if orphaned else SESSION_GRACE_S)
                finally:
                    # Awaited: leadership lost, it must not live on (nor its error be lost).
                    await cancel_and_wait([waiter])
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    def _window_s(self) -> float:
        """The heartbeat window: period x misses."""
        return defaults.heartbeat_window_ms(self.cache.cluster_spec().dispatcher) / 1000

    def _check_all(self, grace_s: float) -> None:
        for node in self.cache.list_objects(Kind.NODE):
            self._check(node.id, grace_s)

    def _check(self, node_id: str, grace_s: float) -> None:
        owner = self.cache.session_owner(node_id)
        if owner is not None:
            self._owners[node_id] = owner
            timer = self._timers.pop(node_id, None)
            if timer is not None:
                timer.cancel()
            node = self.cache.get(Kind.NODE, node_id)
            if node is not None and node.status.state == pb.NODE_DOWN:
                # Marked down while its session key could not be written (etcd away):
                # the session is there now, so is the node.
                self._expired.put_nowait(node_id)
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
                await self._revive(node_id, fence)
                continue
            node = self.cache.get(Kind.NODE, node_id)
            if node is None or node.status.state != pb.NODE_READY:
                continue
            if now_ms() - node.status.heartbeat_at_ms < SESSION_GRACE_S * 1000:
                # It registered just now (the chaos test: 34 ms before): the manager
                # holding its new session has not written the session key yet.
                self._check(node_id, SESSION_GRACE_S)
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

    async def _revive(self, node_id: str, fence: Fence) -> None:
        """A down node whose agent holds a session again is ready (its agent registered
        while the session key could not be written, e.g. during an etcd failover)."""
        node = self.cache.get(Kind.NODE, node_id)
        if node is None or node.status.state != pb.NODE_DOWN:
            return
        up = pb.Node()
        up.CopyFrom(node)
        up.status.state = pb.NODE_READY
        up.status.message = ""
        try:
            await self.store.batch([Update(up)], fence)
            log.info("node %s: has an agent session again; ready", node_id)
        except Conflict:
            self._check(node_id, 0.0)
