"""The agent's session with a manager: register, heartbeat, report, receive work.

One bidirectional stream. When it drops, the agent reconnects with backoff to
any manager it knows; the Register message carries every task's last status,
so nothing reported during the gap is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from shoal import defaults
from shoal.aiotasks import awaiting, cancel_and_wait
from shoal.grpcstreams import start_feeding, stop_feeding
from shoal.pki.identity import NodeIdentity
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import dispatcher_pb2_grpc as dpb_grpc
from shoal.proto import objects_pb2 as pb
from shoal.worker.worker import Worker

log = logging.getLogger(__name__)

LOG_BACKLOG_BYTES = 1024 * 1024

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
# Status reports are held this long so a burst goes out as one message.
REPORT_BATCH_S = 0.02
# A session the manager has not answered by then is given up and made again: seen in
# a 5,000-node mass join, a stream whose first message never came, on a live
# connection, left an agent waiting for good (the manager had marked it down).
SESSION_START_TIMEOUT_S = 30.0
SESSION_CLOSE_TIMEOUT_S = 10.0


class SessionStalled(Exception):
    """The manager did not answer the session's Register."""


class Session:
    def __init__(
        self,
        identity: Callable[[], NodeIdentity],
        managers: list[str],
        description: Callable[[], pb.NodeDescription],
        advertise_addr: str = "",
    ) -> None:
        self.identity = identity
        self.managers = list(dict.fromkeys(managers))
        self.description = description
        self.advertise_addr = advertise_addr
        self.worker: Worker | None = None
        self.connected = asyncio.Event()
        self.current_manager = ""
        # Sessions established after the first (metrics).
        self.reconnects = 0
        self._sessions = 0
        # The node's CPU/memory for heartbeats (set by the agent when it serves metrics).
        self.usage: Callable[[], dpb.NodeUsage] | None = None
        self._pending: dict[str, pb.TaskStatus] = {}
        self._pending_event = asyncio.Event()
        # When the last status report went out (loop time): it counts as a heartbeat.
        self._reported_at = 0.0
        # When the node's usage last went out (on a heartbeat or a report).
        self._usage_at = float("-inf")
        # The heartbeat period the manager asked for.
        self._period_s = defaults.HEARTBEAT_PERIOD_MS / 1000
        self._out: asyncio.Queue[dpb.AgentMessage] | None = None
        self._left = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()  # closes that hung, left behind

    async def leave(self, timeout_s: float = 1.0) -> None:
        """Tells the manager this is a clean stop (the agent comes back), so the node
        stays ready for a while instead of being marked down at once."""
        if self._out is None or not self.connected.is_set():
            return
        self._out.put_nowait(dpb.AgentMessage(leave=dpb.Leave(reason="agent stopping")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._left.wait(), timeout_s)

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        self._pending[task_id] = status
        self._pending_event.set()

    async def run(self) -> None:
        backoff = BACKOFF_MIN_S
        turn = 0
        while True:
            addr = self.managers[turn % len(self.managers)]
            turn += 1
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                await self._session(addr)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                    log.error("manager %s refused this node: %s", addr, err.details())
                else:
                    log.warning(
                        "session with %s ended: %s %s", addr, err.code().name, err.details()
                    )
            except (OSError, SessionStalled) as err:
                log.warning("session with %s failed: %s", addr, err)
            finally:
                self.connected.clear()
            if loop.time() - started > 10:
                backoff = BACKOFF_MIN_S
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _session(self, addr: str) -> None:
        assert self.worker is not None
        worker = self.worker
        out: asyncio.Queue[dpb.AgentMessage] = asyncio.Queue()
        # Everything pending goes in the Register message.
        self._pending.clear()
        out.put_nowait(
            dpb.AgentMessage(
                register=dpb.Register(
                    description=self.description(),
                    advertise_addr=self.advertise_addr,
                    statuses=worker.statuses(),
                    takes_batches=True,
                )
            )
        )

        # Log data waiting to go out; past LOG_BACKLOG_BYTES a log stream waits
        # (backpressure: inotify lets it resume where it was), heartbeats never do.
        log_backlog = [0]
        log_drained = asyncio.Event()

        async def outgoing() -> AsyncIterator[dpb.AgentMessage]:
            while True:
                msg = await out.get()
                yield msg
                kind = msg.WhichOneof("msg")
                if kind == "log":
                    log_backlog[0] -= len(msg.log.data)
                    if log_backlog[0] <= LOG_BACKLOG_BYTES:
                        log_drained.set()
                elif kind == "leave":
                    self._left.set()

        self._out = out

        async def send_log(chunk: dpb.LogChunk) -> None:
            while log_backlog[0] > LOG_BACKLOG_BYTES:
                log_drained.clear()
                await log_drained.wait()
            log_backlog[0] += len(chunk.data)
            out.put_nowait(dpb.AgentMessage(log=chunk))

        channel = self.identity().channel(addr)
        helpers: list[asyncio.Task[None]] = [asyncio.create_task(self._send_reports(out))]
        call = dpb_grpc.DispatcherStub(channel).Session()
        writer = start_feeding(call, outgoing())
        try:
            await self._receive(call, addr, worker, out, helpers, send_log)
        finally:
            await self._close(addr, call, writer, helpers, channel)

    async def _close(
        self,
        addr: str,
        call: Any,
        writer: asyncio.Task[None],
        helpers: list[asyncio.Task[None]],
        channel: grpc.aio.Channel,
    ) -> None:
        """Ends a session's call, its tasks and its channel; a close that hangs is left
        behind (and said where it waits), so the agent still gets a new session: one
        agent of 5,000 was once seen never to come back after its session ended."""

        async def close() -> None:
            await stop_feeding(call, writer)
            await cancel_and_wait(helpers)
            await channel.close()

        closing = asyncio.create_task(close())
        done, _ = await asyncio.wait({closing}, timeout=SESSION_CLOSE_TIMEOUT_S)
        if not done:
            log.warning(
                "session with %s: closing it takes over %gs, going on (it waits in %s)",
                addr,
                SESSION_CLOSE_TIMEOUT_S,
                awaiting(closing),
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _receive(
        self,
        call: Any,
        addr: str,
        worker: Worker,
        out: asyncio.Queue[dpb.AgentMessage],
        helpers: list[asyncio.Task[None]],
        send_log: Callable[[dpb.LogChunk], Awaitable[None]],
    ) -> None:
        """The manager's messages, until the session ends."""
        responses = aiter(call)
        try:
            first = await asyncio.wait_for(anext(responses), SESSION_START_TIMEOUT_S)
        except TimeoutError:
            raise SessionStalled(f"no answer in {SESSION_START_TIMEOUT_S:g}s") from None
        except StopAsyncIteration:
            return
        async for received in _following(first, responses):
            # A batch: what the manager had queued for this agent at once, in order.
            batch = received.batch.messages if received.HasField("batch") else [received]
            for msg in batch:
                if not msg.HasField("session"):
                    self._deliver(worker, msg, send_log)
                    continue
                info = msg.session
                if info.managers:
                    # Live managers first (the manager sends them again when they
                    # change); ones known before stay as a last resort.
                    self.managers = list(dict.fromkeys([*info.managers, *self.managers]))
                if info.heartbeat_period_ms:
                    self._period_s = info.heartbeat_period_ms / 1000
                if self.current_manager == addr and self.connected.is_set():
                    continue  # new settings within this session
                log.info("session with manager %s (node %s)", addr, info.node_id)
                self.current_manager = addr
                self.connected.set()
                self._sessions += 1
                self.reconnects = self._sessions - 1
                helpers.append(asyncio.create_task(self._heartbeat(out)))

    @staticmethod
    def _deliver(
        worker: Worker,
        msg: dpb.DispatcherMessage,
        send_log: Callable[[dpb.LogChunk], Awaitable[None]],
    ) -> None:
        """Hands one of the manager's messages (other than SessionInfo) to the worker."""
        kind = msg.WhichOneof("msg")
        if kind == "assignments":
            worker.assign(msg.assignments)
        elif kind == "log_request":
            worker.serve_logs(msg.log_request, send_log)
        elif kind == "peers":
            worker.peers(msg.peers)
        elif kind == "services":
            worker.services(msg.services)
        elif kind == "log_cancel":
            worker.cancel_logs(msg.log_cancel.request_id)

    def _usage(self, due_only: bool) -> dpb.NodeUsage | None:
        """The node's CPU and memory figures (web view); with due_only, None unless a
        period has passed since they last went out."""
        now = asyncio.get_running_loop().time()
        if self.usage is None or (due_only and now - self._usage_at < self._period_s):
            return None
        self._usage_at = now
        return self.usage()

    async def _heartbeat(self, out: asyncio.Queue[dpb.AgentMessage]) -> None:
        """A heartbeat a period after the last message the manager counts as one (a
        heartbeat or a status report): while tasks come and go, reports keep the node
        alive (and carry its usage figures), and heartbeats (a gRPC message each, on a
        manager that takes hundreds a second) are not sent."""
        loop = asyncio.get_running_loop()
        # The period is read at each beat: the manager may stretch it as its fleet grows.
        due = loop.time() + self._period_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            reported = self._reported_at + self._period_s
            if reported > loop.time():
                due = reported
                continue
            usage = self._usage(due_only=False)
            out.put_nowait(dpb.AgentMessage(heartbeat=dpb.Heartbeat(usage=usage)))
            due = loop.time() + self._period_s

    async def _send_reports(self, out: asyncio.Queue[dpb.AgentMessage]) -> None:
        while True:
            await self._pending_event.wait()
            await asyncio.sleep(REPORT_BATCH_S)
            self._pending_event.clear()
            pending, self._pending = self._pending, {}
            if pending:
                self._reported_at = asyncio.get_running_loop().time()
                updates = [dpb.TaskStatusUpdate(task_id=t, status=s) for t, s in pending.items()]
                batch = dpb.TaskStatusBatch(updates=updates, usage=self._usage(due_only=True))
                out.put_nowait(dpb.AgentMessage(statuses=batch))


async def _following(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
