"""A pass that creates several services' tasks writes them grouped by node: each
agent then gets all its new tasks of the pass in one assignment message (and reports
them in one), instead of one message per service. Real etcd; small transactions so
that the pass takes several."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shoal.manager.dispatcher import Dispatcher
from shoal.manager.orchestrator.plan import write_order
from shoal.manager.reconciler import Reconciler
from shoal.manager.session import AgentSession
from shoal.manager.store import Cache, Create, Kind, Op, Store, Update, chunks
from shoal.manager.store import store as store_module
from shoal.manager.store.txn import Fence
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb

from .helpers import make_node, service_spec, until
from .test_orchestration import create_service


def assignment_messages(session: AgentSession) -> list[dpb.Assignments]:
    """What the dispatcher queued for the agent: its assignment messages."""
    out = []
    while not session.outbox.empty():
        msg = session.outbox.get_nowait()
        assert msg is not None
        for part in msg.batch.messages if msg.HasField("batch") else [msg]:
            if part.HasField("assignments"):
                out.append(part.assignments)
    return out


async def test_a_pass_writes_each_nodes_new_tasks_together(
    store: Store, cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few tasks per transaction: the pass's 12 tasks take several.
    monkeypatch.setattr(store_module, "MAX_TXN_OPS", 4)
    nodes = [make_node(f"n{i}") for i in range(4)]
    await store.batch([Create(n) for n in nodes])
    services = [await create_service(store, service_spec(f"s{i}", replicas=4)) for i in range(3)]
    await cache.sync()

    dispatcher = Dispatcher(store, cache)
    await dispatcher.start()
    try:
        for n in nodes:
            dispatcher.sessions[n.id] = AgentSession(n.id)
        chunks: list[list[str]] = []
        write = store.batch

        async def recorded(ops: Sequence[Op], fence: Fence | None = None) -> int:
            chunks.append([op.obj.node_id for op in ops if isinstance(op.obj, pb.Task)])
            return await write(ops, fence)

        monkeypatch.setattr(store, "batch", recorded)
        # One pass for the three services (a burst of creates that gathered).
        assert await Reconciler(store, cache).reconcile({s.id for s in services}, None)  # type: ignore[arg-type]
        assert len(chunks) == 4
        # Every node's three tasks went in one transaction.
        for n in nodes:
            assert sum(n.id in chunk for chunk in chunks) == 1, chunks
        await until(cache, lambda: len(cache.list_objects(Kind.TASK)) == 12)
        for _ in range(200):  # the dispatcher's turn on the loop
            if all(not s.outbox.empty() for s in dispatcher.sessions.values()):
                break
            await asyncio.sleep(0.01)
        for n in nodes:
            sent = assignment_messages(dispatcher.sessions[n.id])
            assert [len(a.tasks) for a in sent] == [3], (n.description.hostname, sent)
    finally:
        await dispatcher.stop()


def _replacements(count: int) -> list[Op]:
    """A pass that replaces count tasks: each old one told to shut down, its new one
    placed on another node, side by side as the orchestrator decides them."""
    ops: list[Op] = []
    for i in range(count):
        old = pb.Task(id=f"old{i}", service_id="s", node_id=f"n{i % 7}")
        old.status.state = pb.RUNNING
        ended = pb.Task()
        ended.CopyFrom(old)
        ended.desired_state = pb.SHUTDOWN
        ops.append(Update(ended, old))
        ops.append(Create(pb.Task(id=f"new{i}", service_id="s", node_id=f"n{(i + 3) % 7}")))
    return ops


def test_a_pass_in_one_transaction_is_grouped_by_node() -> None:
    ops = _replacements(10)
    assert len(chunks(ops)) == 1
    ordered = write_order(ops)
    assert sorted(map(id, ordered)) == sorted(map(id, ops))
    assert all(isinstance(op, Update) for op in ordered[:10])
    nodes = [op.obj.node_id for op in ordered[10:]]
    assert nodes == sorted(nodes)


def test_a_pass_of_several_transactions_keeps_each_replacement_beside_its_shutdown() -> None:
    # Over MAX_TXN_OPS operations: moved apart, a shutdown and its replacement would
    # land in different transactions, and a conflict in the later one would leave
    # the service short until the next pass.
    ops = _replacements(100)
    assert len(chunks(ops)) > 1
    assert write_order(ops) == ops


def test_a_large_pass_that_only_places_tasks_is_grouped_by_node() -> None:
    ops: list[Op] = [
        Create(pb.Task(id=f"t{i}", service_id="s", node_id=f"n{i % 9}")) for i in range(300)
    ]
    assert len(chunks(ops)) > 1
    nodes = [op.obj.node_id for op in write_order(ops)]
    assert nodes == sorted(nodes)
