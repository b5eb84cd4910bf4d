"""The dispatcher: one long-lived session per node (runs on every manager).

An agent registers, then heartbeats and reports task status; the dispatcher
streams the node's task assignments (full set at start, then changes), marks
the node down when heartbeats stop; the agents' task status reports go to etcd in
batches (statuswriter.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from shoal import defaults
from shoal.aiotasks import cancel_and_wait, supervised
from shoal.clock import now_ms
from shoal.manager.authz import peer_identity
from shoal.manager.hostprobe import host_answers, peer_addr
from shoal.manager.keyservice import KeyKeeper
from shoal.manager.peers import PeerTable
from shoal.manager.presence import Presence
from shoal.manager.secrets import serve_task_files
from shoal.manager.servicetable import ServiceTable
from shoal.manager.session import AgentSession, Traffic, assignment_changed
from shoal.manager.statuswriter import StatusWriter
from shoal.manager.store import Cache, Conflict, Kind, Store
from shoal.manager.validation import clean_description
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import dispatcher_pb2_grpc as dpb_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

MAX_HEARTBEATS_PER_S = 200
REGISTER_TIMEOUT_S = 10.0


class Dispatcher(dpb_grpc.DispatcherServicer):
    def __init__(
        self,
        store: Store,
        cache: Cache,
        managers: Callable[[], list[str]] | None = None,
        presence: Presence | None = None,
        keys: KeyKeeper | None = None,
    ) -> None:
        self.store = store
        self.keys = keys  # opens secret data for TaskFiles (None: no secrets here)
        self.cache = cache
        self.managers = managers or (lambda: [])
        # Where this manager records which sessions it holds (None in unit tests).
        self.presence = presence
        self.sessions: dict[str, AgentSession] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # When each agent last sent anything (loop time): what its down timer checks.
        self._seen: dict[str, float] = {}
        self._periods: dict[str, int] = {}
        # The period last told to every session (_stretch_periods).
        self._announced_period = 0
        self._stopping = False
        self.statuses = StatusWriter(store, cache)
        self._background: list[asyncio.Task[None]] = []
        self._probes: set[asyncio.Task[None]] = set()
        self.peers = PeerTable(cache)
        self.services = ServiceTable(cache)
        # Nodes' own CPU/memory from their heartbeats (web view), sessions held here only.
        self.usage: dict[str, dpb.NodeUsage] = {}
        self.traffic = Traffic()

    async def start(self) -> None:
        self.peers.rebuild()
        self.services.rebuild()
        self._background = [
            supervised("dispatcher assignments", self._push_assignments),
            supervised("dispatcher status writes", self.statuses.run),
            supervised("dispatcher manager list", self._announce_managers),
        ]

    async def stop(self) -> None:
        self._stopping = True
        for session in list(self.sessions.values()):
            session.close()
        await cancel_and_wait([*self._background, *self._probes])
        for timer in self._timers.values():
            timer.cancel()

    # ------------------------------------------------------------ settings

    def heartbeat_period_ms(self) -> int:
        """The cluster's period, stretched so this manager takes at most
        MAX_HEARTBEATS_PER_S: a big cluster on a small manager must not drown in
        heartbeats (and then mark busy nodes down)."""
        configured = int(self.cache.cluster_spec().dispatcher.heartbeat_period_ms) or (
            defaults.HEARTBEAT_PERIOD_MS
        )
        return max(configured, (len(self.sessions) + 1) * 1000 // MAX_HEARTBEATS_PER_S)

    def _down_after_s(self, node_id: str) -> float:
        period = self._periods.get(node_id) or self.heartbeat_period_ms()
        return defaults.heartbeat_window_ms(self.cache.cluster_spec().dispatcher, period) / 1000

    # ------------------------------------------------------------ session

    async def Session(
        self, requests: AsyncIterator[dpb.AgentMessage], context: Any
    ) -> AsyncIterator[dpb.DispatcherMessage]:
        ident = peer_identity(context)
        if ident is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a node certificate is required")
            return
        node_id = ident.node_id
        await self.cache.sync()
        if self.cache.get(Kind.NODE, node_id) is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this node was removed from the cluster"
            )
            return
        try:
            first = await asyncio.wait_for(anext(aiter(requests)), REGISTER_TIMEOUT_S)
        except (TimeoutError, StopAsyncIteration):
            return
        self.traffic.received["register"] += 1
        if first.WhichOneof("msg") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with register")
            return

        peer = context.peer()
        await self._node_up(node_id, first.register, peer)
        session = AgentSession(node_id, first.register.takes_batches)
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()
        # No await between the full set and registering the session: every
        # later change reaches this session as a diff.
        full = self._assignments(self.cache.tasks_of_node(node_id), full=True)
        peers = dpb.PeerUpdate(full=True, endpoints=self.peers.full(node_id))
        self.sessions[node_id] = session
        if self.presence is not None:
            self.presence.claim_session(node_id)
        self.statuses.queue(node_id, first.register.statuses)
        # The period this agent is told: its down timer must use the same one.
        self._periods[node_id] = self.heartbeat_period_ms()
        self._arm_timer(node_id)
        self._stretch_periods()
        log.info("node %s: session %s started (%s)", node_id, session.id[:8], peer)

        reader = asyncio.create_task(self._read(session, requests))
        try:
            start = self._start_message(node_id, full, peers)
            sent = self.traffic.sent
            for msg in [start] if session.takes_batches else start.batch.messages:
                sent[msg.WhichOneof("msg")] += 1
                yield msg
            while True:
                batch = await session.next_batch()
                if batch is None:
                    break
                sent[batch.WhichOneof("msg")] += 1
                yield batch
        finally:
            await cancel_and_wait([reader])
            if self.sessions.get(node_id) is session:
                del self.sessions[node_id]
                self.usage.pop(node_id, None)
                self._seen.pop(node_id, None)
                timer = self._timers.pop(node_id, None)
                if timer is not None:
                    timer.cancel()
                if not self._stopping and self.presence is not None:
                    # An agent that said it stops cleanly gets the heartbeat window to
                    # come back (its containers keep running meanwhile); one that just
                    # vanished is told apart by whether its host still answers.
                    if session.leaving:
                        self.presence.release_session(node_id, self._down_after_s(node_id))
                    else:
                        self.presence.release_session(node_id)
                        probe = asyncio.create_task(self._probe_lost(node_id, session, peer))
                        self._probes.add(probe)
                        probe.add_done_callback(self._probes.discard)
            session.close()
            log.info("node %s: session %s ended", node_id, session.id[:8])

    def _start_message(
        self, node_id: str, full: dpb.Assignments, peers: dpb.PeerUpdate
    ) -> dpb.DispatcherMessage:
        """A session's first message, in one: the session, then services (does a task
        need a namespace), assignments (with their networks), peers."""
        period, managers = self._periods[node_id], self.managers()
        info = dpb.SessionInfo(node_id=node_id, heartbeat_period_ms=period, managers=managers)
        start = dpb.DispatcherBatch()
        start.messages.add().session.CopyFrom(info)
        start.messages.add().services.CopyFrom(self.services.full())
        start.messages.add().assignments.CopyFrom(full)
        start.messages.add().peers.CopyFrom(peers)
        return dpb.DispatcherMessage(batch=start)

    async def _probe_lost(self, node_id: str, session: AgentSession, peer: str) -> None:
        """A session that ended without Leave was released at once (a host that is gone
        fails over fast); but a host that still answers lost only its agent process
        (crashed, OOM-killed: its containers run on). Such a node's session is taken
        back, within the leader's short grace, and held for the heartbeat window."""
        addr = peer_addr(peer)
        if addr is None or not await host_answers(*addr):
            return
        current = self.sessions.get(node_id)
        if (current is not None and current is not session) or self.presence is None:
            return  # it registered again meanwhile
        log.info("node %s: agent gone but its host answers: waiting for it", node_id)
        self.presence.claim_session(node_id)
        self.presence.release_session(node_id, self._down_after_s(node_id))

    async def _read(self, session: AgentSession, requests: AsyncIterator[dpb.AgentMessage]) -> None:
        try:
            received = self.traffic.received
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                received[kind] += 1
                if kind == "heartbeat":
                    self._arm_timer(session.node_id)
                    if msg.heartbeat.HasField("usage"):
                        self.usage[session.node_id] = msg.heartbeat.usage
                elif kind == "statuses":
                    self._arm_timer(session.node_id)
                    self.statuses.queue(session.node_id, msg.statuses.updates)
                    if msg.statuses.HasField("usage"):  # it stood in for a heartbeat
                        self.usage[session.node_id] = msg.statuses.usage
                elif kind == "log":
                    q = session.logs.get(msg.log.request_id)
                    if q is not None:
                        q.put(msg.log)
                elif kind == "leave":
                    session.leaving = True
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()

    async def TaskFiles(self, request: dpb.TaskFilesRequest, context: Any) -> dpb.TaskFilesResponse:
        """A task's secrets and configs, only for the node its task runs on."""
        return await serve_task_files(self.cache, self.keys, request, context)

    # ------------------------------------------------------------ node liveness

    def _arm_timer(self, node_id: str) -> None:
        """Notes that the agent spoke. Its down timer is not replaced at every message:
        when it fires it looks at when the agent last spoke, and waits on if it did since
        (one timer per heartbeat window, not one per message)."""
        loop = asyncio.get_running_loop()
        self._seen[node_id] = loop.time()
        if node_id not in self._timers:
            self._timers[node_id] = loop.call_later(
                self._down_after_s(node_id), self._check_silence, node_id
            )

    def _check_silence(self, node_id: str) -> None:
        loop = asyncio.get_running_loop()
        self._timers.pop(node_id, None)
        left = self._seen.get(node_id, 0.0) + self._down_after_s(node_id) - loop.time()
        if left > 0:
            self._timers[node_id] = loop.call_later(left, self._check_silence, node_id)
            return
        expiry = asyncio.ensure_future(self._expired(node_id))
        self._probes.add(expiry)
        expiry.add_done_callback(self._probes.discard)

    async def _expired(self, node_id: str) -> None:
        """The session is open but the agent went silent."""
        now = asyncio.get_running_loop().time()
        if self._seen.get(node_id, 0.0) + self._down_after_s(node_id) > now:
            return  # it spoke since the check: _arm_timer armed a new timer
        timer = self._timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        self._seen.pop(node_id, None)
        session = self.sessions.pop(node_id, None)
        if session is not None:
            session.close()
        if self.presence is not None:
            self.presence.release_session(node_id)
            # The agent may have gone on to another manager meanwhile (its connection
            # here died without a word): that session is the node's, not this one.
            await self.cache.sync()
            owner = self.cache.session_owner(node_id)
            if owner not in (None, self.presence.manager_id):
                log.info("node %s: silent here; its agent has a session with %s", node_id, owner)
                return
        log.warning(
            "node %s: no heartbeat for %.1fs, marking it down",
            node_id,
            self._down_after_s(node_id),
        )

        def down(node: pb.Node) -> None:
            node.status.state = pb.NODE_DOWN
            node.status.message = "heartbeat failure"

        await self._update_node(node_id, down)

    async def _node_up(self, node_id: str, reg: dpb.Register, peer: str) -> None:
        def up(node: pb.Node) -> None:
            node.description.CopyFrom(clean_description(reg.description, node.description.hostname))
            node.status.state = pb.NODE_READY
            node.status.message = ""
            node.status.addr = reg.advertise_addr or (peer_addr(peer) or ("", 0))[0]
            node.status.heartbeat_at_ms = now_ms()

        await self._update_node(node_id, up)

    async def _update_node(self, node_id: str, mutate: Callable[[pb.Node], None]) -> None:
        for _ in range(10):
            await self.cache.sync()
            current = self.cache.get(Kind.NODE, node_id)
            if current is None:
                return
            node = pb.Node()
            node.CopyFrom(current)
            mutate(node)
            if node == current:
                return
            try:
                await self.store.update(node)
                return
            except Conflict:
                continue
        log.error("node %s: could not update its status after 10 tries", node_id)

    async def _announce_managers(self) -> None:
        """Tells every agent when managers come or go, so it can fail over to one that
        joined after its session started."""
        with self.cache.manager_changes() as feed:
            while True:
                await feed.get()
                while not feed.empty():
                    feed.get_nowait()
                managers = self.managers()
                for node_id, session in self.sessions.items():
                    self._tell(node_id, session, managers)

    def _tell(self, node_id: str, session: AgentSession, managers: list[str]) -> None:
        """The session's settings again: its heartbeat period, the live managers."""
        info = dpb.SessionInfo(
            node_id=node_id, heartbeat_period_ms=self._periods.get(node_id, 0), managers=managers
        )
        session.send(dpb.DispatcherMessage(session=info))

    def _stretch_periods(self) -> None:
        """Each time the period has grown by half, sessions told a shorter one are told
        the new one: the MAX_HEARTBEATS_PER_S cap holds for the whole fleet (5,000 nodes
        joining one by one sent 2.6 times as many). Their down window grows first."""
        period = self.heartbeat_period_ms()
        self._announced_period = self._announced_period or period
        if period * 2 < self._announced_period * 3:
            return
        self._announced_period = period
        managers = self.managers()
        for node_id, session in self.sessions.items():
            if self._periods.get(node_id, 0) < period:
                self._periods[node_id] = period
                self._tell(node_id, session, managers)

    # ------------------------------------------------------------ assignments

    async def _push_assignments(self) -> None:
        with self.cache.subscribe() as sub:
            while True:
                resync, changes = await sub.next()
                if resync:
                    self.peers.rebuild()
                    self.services.resync(self.sessions.values())
                    for node_id, session in self.sessions.items():
                        session.send(
                            dpb.DispatcherMessage(
                                peers=dpb.PeerUpdate(full=True, endpoints=self.peers.full(node_id))
                            )
                        )
                        session.send(
                            dpb.DispatcherMessage(
                                assignments=self._assignments(
                                    self.cache.tasks_of_node(node_id), full=True
                                )
                            )
                        )
                    continue
                # Peers first: an agent learns its remote endpoints no later than its tasks.
                for node_id, update in self.peers.apply(changes).items():
                    target = self.sessions.get(node_id)
                    if target is not None and (update.endpoints or update.removed):
                        target.send(
                            dpb.DispatcherMessage(
                                peers=dpb.PeerUpdate(
                                    endpoints=list(update.endpoints.values()),
                                    removed=sorted(update.removed),
                                )
                            )
                        )
                self.services.publish(changes, self.sessions.values())
                updated: dict[str, dict[str, pb.Task]] = defaultdict(dict)
                removed: dict[str, set[str]] = defaultdict(set)
                for c in changes:
                    if c.kind == Kind.NODE and c.obj is None:
                        gone = self.sessions.pop(c.id, None)
                        if gone is not None:
                            gone.close()
                    if c.kind != Kind.TASK:
                        continue
                    new, old = c.obj, c.old
                    assert new is None or isinstance(new, pb.Task)
                    assert old is None or isinstance(old, pb.Task)
                    if new is not None and new.node_id and assignment_changed(old, new):
                        updated[new.node_id][new.id] = new
                        removed[new.node_id].discard(new.id)
                    if (
                        old is not None
                        and old.node_id
                        and (new is None or new.node_id != old.node_id)
                    ):
                        removed[old.node_id].add(old.id)
                        updated[old.node_id].pop(old.id, None)
                for node_id in updated.keys() | removed.keys():
                    target = self.sessions.get(node_id)
                    if target is None:
                        continue
                    tasks = list(updated.get(node_id, {}).values())
                    gone_ids = sorted(removed.get(node_id, ()))
                    if tasks or gone_ids:
                        msg = self._assignments(tasks, full=False)
                        msg.removed.extend(gone_ids)
                        target.send(dpb.DispatcherMessage(assignments=msg))

    def _assignments(self, tasks: list[pb.Task], full: bool) -> dpb.Assignments:
        """Tasks with the networks they attach to."""
        net_ids = {a.network_id for t in tasks for a in t.networks}
        nets = [n for n in (self.cache.get(Kind.NETWORK, i) for i in sorted(net_ids)) if n]
        return dpb.Assignments(full=full, tasks=tasks, networks=nets)

    # ------------------------------------------------------------ task status

    def flushed(self) -> bool:
        """No agent report waits to be written (part of GetCluster's idle signal)."""
        return self.statuses.flushed()

    # ------------------------------------------------------------ logs

    async def logs(
        self, node_id: str, task_ids: list[str], follow: bool, tail: int
    ) -> AsyncIterator[dpb.LogChunk]:
        """Streams task logs from the node's agent over its session."""
        session = self.sessions.get(node_id)
        if session is None:
            raise LookupError(f"node {node_id} has no session with this manager")
        async for chunk in session.stream_logs(task_ids, follow, tail):
            yield chunk
