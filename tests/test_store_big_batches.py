"""Batches are cut by bytes as well as by count: sixty tasks of a 77 KB spec (300 env
vars of 250 bytes) must not make one etcd request over its size limit."""

from __future__ import annotations

import pytest

from shoal.manager.ids import new_id
from shoal.manager.store import Create, Store
from shoal.manager.store.store import MAX_TXN_BYTES
from shoal.proto import objects_pb2 as pb

pytestmark = pytest.mark.integration


def big_task(service_id: str, slot: int) -> pb.Task:
    t = pb.Task(id=new_id(), service_id=service_id, slot=slot)
    t.spec.container.image = "busybox"
    t.spec.container.env.extend(f"VAR{i}=" + "x" * 250 for i in range(300))
    return t


async def test_big_tasks_are_written_in_chunks_under_the_request_limit(store: Store) -> None:
    tasks = [big_task("svc", i) for i in range(60)]
    total = sum(t.ByteSize() for t in tasks)
    assert total > 3 * MAX_TXN_BYTES  # more than etcd takes in one request
    conflicts, revision = await store.batch_chunked([Create(t) for t in tasks])
    assert conflicts == 0 and revision > 0
    stored, _ = await store.list_all()
    ids = {o.id for o in stored if isinstance(o, pb.Task)}
    assert ids == {t.id for t in tasks}
    assert all(t.meta.version > 0 for t in tasks)
    # Not one transaction per task either: a chunk holds as many as fit.
    assert len({t.meta.version for t in tasks}) <= 6
