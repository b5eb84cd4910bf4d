"""The etcd object store against a real etcd."""

from __future__ import annotations

import asyncio

import pytest

from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.ids import new_id
from shoal.manager.store import (
    AlreadyExists,
    Cache,
    Conflict,
    Create,
    Delete,
    Kind,
    NotFound,
    ObjectWatcher,
    Resync,
    Store,
    Update,
)
from shoal.manager.store.watch import Changes
from shoal.proto import objects_pb2 as pb

pytestmark = pytest.mark.integration


def service(name: str, replicas: int = 1) -> pb.Service:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.replicated.replicas = replicas
    spec.task.container.image = "busybox"
    return pb.Service(id=new_id(), spec=spec)


def task(service_id: str, slot: int, node_id: str = "") -> pb.Task:
    return pb.Task(id=new_id(), service_id=service_id, slot=slot, node_id=node_id)


async def test_create_get_version(store: Store) -> None:
    svc = await store.create(service("web"))
    assert svc.meta.version > 0
    got = await store.get(Kind.SERVICE, svc.id)
    assert got == svc
    with pytest.raises(NotFound):
        await store.get(Kind.SERVICE, "nope")


async def test_create_rejects_duplicate_name(store: Store) -> None:
    await store.create(service("web"))
    with pytest.raises(AlreadyExists, match="'web' already exists"):
        await store.create(service("web"))
    assert len(await store.list_objects(Kind.SERVICE)) == 1


async def test_cas_conflict(store: Store) -> None:
    svc = await store.create(service("web"))
    a = pb.Service()
    a.CopyFrom(svc)
    b = pb.Service()
    b.CopyFrom(svc)
    a.spec.replicated.replicas = 3
    await store.update(a)
    b.spec.replicated.replicas = 5
    with pytest.raises(Conflict, match="out of date"):
        await store.update(b)
    got = await store.get(Kind.SERVICE, svc.id)
    assert isinstance(got, pb.Service)
    assert got.spec.replicated.replicas == 3
    assert got.meta.version == a.meta.version


async def test_batch_is_one_transaction(store: Store) -> None:
    svc = await store.create(service("web"))
    tasks = [task(svc.id, i) for i in range(1, 51)]
    revision = await store.batch([Create(t) for t in tasks])
    assert all(t.meta.version == revision for t in tasks)
    assert len(await store.list_objects(Kind.TASK, service_id=svc.id)) == 50

    # One stale object in a batch: nothing of the batch is written.
    stale = pb.Task()
    stale.CopyFrom(tasks[0])
    tasks[0].slot = 99
    await store.update(tasks[0])
    more = [task(svc.id, 100 + i) for i in range(5)]
    stale.slot = 7
    with pytest.raises(Conflict):
        await store.batch([Update(stale), *(Create(t) for t in more)])
    assert len(await store.list_objects(Kind.TASK)) == 50


async def test_list_by_index(store: Store) -> None:
    a, b = service("a"), service("b")
    await store.batch([Create(a), Create(b)])
    await store.batch(
        [Create(task(a.id, 1, "n1")), Create(task(a.id, 2, "n2")), Create(task(b.id, 1, "n1"))]
    )
    assert len(await store.list_objects(Kind.TASK, service_id=a.id)) == 2
    assert len(await store.list_objects(Kind.TASK, node_id="n1")) == 2
    assert len(await store.list_objects(Kind.TASK, service_id=a.id, node_id="n1")) == 1


async def test_batch_chunked_beyond_txn_limit(store: Store) -> None:
    svc = await store.create(service("big"))
    conflicts, revision = await store.batch_chunked([Create(task(svc.id, i)) for i in range(300)])
    assert conflicts == 0
    assert revision == await store.revision()
    assert len(await store.list_objects(Kind.TASK)) == 300


async def test_delete_frees_name(store: Store) -> None:
    svc = await store.create(service("web"))
    await store.delete(svc)
    await store.create(service("web"))


async def test_watch_resumes_after_dropped_stream(etcd: EmbeddedEtcd, store: Store) -> None:
    start = await store.revision()
    watcher = ObjectWatcher(store, start + 1)
    seen: list[str] = []
    it = aiter(watcher)

    async def collect(n: int) -> None:
        while len(seen) < n:
            item = await anext(it)
            assert isinstance(item, Changes)
            seen.extend(c.id for c in item.changes)

    first = await store.create(service("one"))
    await asyncio.wait_for(collect(1), 10)
    # Restart etcd under the watcher: the stream drops, the data stays.
    pending = asyncio.create_task(collect(3))
    await etcd.stop()
    await etcd.start()
    second = await store.create(service("two"))
    third = await store.create(service("three"))
    await asyncio.wait_for(pending, 15)
    assert seen == [first.id, second.id, third.id]


async def test_watch_relists_after_compaction(store: Store) -> None:
    start = await store.revision()
    a = await store.create(service("a"))
    b = await store.create(service("b"))
    await store.delete(a)
    c = await store.create(service("c"))
    await store.compact(await store.revision())
    # A watcher that resumes from before the compaction must get the full state.
    watcher = ObjectWatcher(store, start + 1)
    item = await asyncio.wait_for(anext(aiter(watcher)), 10)
    assert isinstance(item, Resync)
    ids = {o.id for o in item.objects}  # type: ignore[attr-defined]
    assert ids == {b.id, c.id}


async def test_cache_follows_and_indexes(store: Store, cache: Cache) -> None:
    svc = await store.create(service("web"))
    t1, t2 = task(svc.id, 1, "n1"), task(svc.id, 2, "n2")
    await store.batch([Create(t1), Create(t2)])
    await cache.sync()
    assert cache.id_by_name(Kind.SERVICE, "web") == svc.id
    assert {t.id for t in cache.tasks_of_service(svc.id)} == {t1.id, t2.id}
    assert [t.id for t in cache.tasks_of_node("n1")] == [t1.id]

    t1.node_id = "n2"
    await store.update(t1)
    await store.batch([Delete(t2)])
    await cache.sync()
    assert cache.tasks_of_node("n1") == []
    assert [t.id for t in cache.tasks_of_node("n2")] == [t1.id]
    assert cache.get(Kind.TASK, t2.id) is None


async def test_cache_sync_after_unrelated_writes(store: Store, cache: Cache) -> None:
    # Revisions that touch no object (leases, leader key) must not stall sync().
    lease = await store.grant_lease(10)
    await store.revoke_lease(lease)
    await store.conn.kv.Put(__import__("aetcd").rpc.PutRequest(key=store.keys.leader, value=b"x"))
    await asyncio.wait_for(cache.sync(), 5)


async def test_claims_make_concurrent_allocation_fail_not_duplicate(store: Store) -> None:
    """Two writers claim the same IP at once: etcd lets exactly one through."""

    def with_ip(ip: str) -> pb.Task:
        t = task("svc", 1)
        t.networks.add(network_id="net", addresses=[f"{ip}/24"], mac="02:00:00:00:00:01")
        return t

    results = await asyncio.gather(
        *(store.create(with_ip("10.0.0.7")) for _ in range(8)), return_exceptions=True
    )
    assert sum(1 for r in results if isinstance(r, pb.Task)) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if not isinstance(r, pb.Task))
    # Freeing the address (an update naming the previous version) releases the claim.
    (holder,) = [r for r in results if isinstance(r, pb.Task)]
    freed = pb.Task()
    freed.CopyFrom(holder)
    del freed.networks[0].addresses[:]
    await store.batch([Update(freed, holder)])
    await store.create(with_ip("10.0.0.7"))
