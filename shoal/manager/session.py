"""One agent's session on this manager: what goes out to it, and its log readers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

from shoal.manager.logbuffer import LogBuffer
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb


def assignment_changed(old: pb.Task | None, new: pb.Task) -> bool:
    """Whether the agent must hear of this change (its own status reports come back too)."""
    return (
        old is None
        or old.node_id != new.node_id
        or old.desired_state != new.desired_state
        or old.spec_version != new.spec_version
        or old.spec != new.spec
        or old.networks != new.networks
    )


class Traffic:
    """gRPC messages over the agents' sessions, by the kind of the top-level message
    (a DispatcherBatch counts once: what the messages cost is per gRPC message)."""

    def __init__(self) -> None:
        self.sent: Counter[str | None] = Counter()
        self.received: Counter[str | None] = Counter()


class AgentSession:
    def __init__(self, node_id: str, takes_batches: bool = True) -> None:
        self.node_id = node_id
        self.id = uuid.uuid4().hex
        # An agent from before DispatcherBatch gets its messages one by one.
        self.takes_batches = takes_batches
        # None ends the session.
        self.outbox: asyncio.Queue[dpb.DispatcherMessage | None] = asyncio.Queue()
        self.logs: dict[str, LogBuffer] = {}
        # The agent said it stops cleanly (and comes back).
        self.leaving = False
        self.closed = False

    def send(self, msg: dpb.DispatcherMessage) -> None:
        self.outbox.put_nowait(msg)

    async def next_batch(self) -> dpb.DispatcherMessage | None:
        """The next message for the agent: everything queued by now goes as one batch
        (one gRPC message, one write, instead of one each); None when the session ends."""
        first = await self.outbox.get()
        if first is None or self.outbox.empty() or not self.takes_batches:
            return first
        batch = dpb.DispatcherBatch(messages=[first])
        while not self.outbox.empty():
            msg = self.outbox.get_nowait()
            if msg is None:
                # Send what came before the end; the end is seen on the next call.
                self.outbox.put_nowait(None)
                break
            batch.messages.append(msg)
        return dpb.DispatcherMessage(batch=batch)

    def close(self) -> None:
        self.closed = True
        self.outbox.put_nowait(None)
        for q in self.logs.values():
            q.put(None)

    async def stream_logs(
        self, task_ids: list[str], follow: bool, tail: int
    ) -> AsyncIterator[dpb.LogChunk]:
        """Task logs from the agent, asked for over this session."""
        request_id = uuid.uuid4().hex
        q = LogBuffer()
        self.logs[request_id] = q
        self.send(
            dpb.DispatcherMessage(
                log_request=dpb.LogRequest(
                    request_id=request_id, task_ids=task_ids, follow=follow, tail=tail
                )
            )
        )
        try:
            while True:
                chunk = await q.get()
                if chunk is None:
                    return
                if chunk.error:
                    raise LookupError(chunk.error)
                if chunk.data:
                    yield chunk
                if chunk.done:
                    return
        finally:
            self.logs.pop(request_id, None)
            if not self.closed:
                self.send(dpb.DispatcherMessage(log_cancel=dpb.LogCancel(request_id=request_id)))
