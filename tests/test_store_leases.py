"""The store's lease-bound keys (election, presence, tombstones of removed objects) and
its error mapping, on a real etcd."""

from __future__ import annotations

import asyncio

import pytest

from shoal.manager.store import Cache, Compacted, Conflict, Kind, LeaseExpired, Removed, Store
from shoal.proto import objects_pb2 as pb


async def test_create_leased_once_then_names_the_holder(store: Store) -> None:
    key = store.keys.leader
    mine, theirs = await store.grant_lease(10), await store.grant_lease(10)
    won = await store.create_leased(key, b"m1", mine)
    assert won.created and won.revision > 0
    lost = await store.create_leased(key, b"m2", theirs)
    assert not lost.created
    assert (lost.value, lost.lease) == (b"m1", mine)
    assert lost.revision >= won.revision


async def test_wait_deleted_returns_when_the_lease_goes(store: Store) -> None:
    key = store.keys.leader
    lease = await store.grant_lease(10)
    claim = await store.create_leased(key, b"m1", lease)
    waiter = asyncio.create_task(store.wait_deleted(key, claim.revision))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    await store.revoke_lease(lease)
    await asyncio.wait_for(waiter, 5)
    assert (await store.create_leased(key, b"m2", await store.grant_lease(10))).created


async def test_put_leased_batches_and_goes_with_the_lease(store: Store) -> None:
    lease = await store.grant_lease(10)
    # More keys than one etcd transaction may carry.
    items = [(store.keys.session(f"n{i}"), b"m1") for i in range(300)]
    await store.put_leased(items, lease)
    assert len(await store.list_live()) == 300
    await store.revoke_lease(lease)
    await store.revoke_lease(lease)  # twice: already gone is fine
    assert await store.list_live() == {}


async def test_delete_if_value_deletes_only_a_matching_key(store: Store) -> None:
    lease = await store.grant_lease(10)
    key = store.keys.session("n1")
    await store.put_leased([(key, b"m2")], lease)
    assert not await store.delete_if_value(key, b"m1")
    assert await store.list_live() == {key: b"m2"}
    assert await store.delete_if_value(key, b"m2")
    assert await store.list_live() == {}


async def test_etcd_errors_come_out_as_store_errors(store: Store) -> None:
    lease = await store.grant_lease(10)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseExpired):
        await store.put_leased([(store.keys.session("n1"), b"m1")], lease)
    first = await store.revision()
    await store.put_leased([(store.keys.session("n1"), b"m1")], 0)
    await store.compact(await store.revision())
    with pytest.raises(Compacted):
        await store.list_prefix(store.keys.kind_prefix(Kind.SERVICE), revision=first)


async def test_create_once_and_tombstones_of_removed_objects(store: Store, cache: Cache) -> None:
    node = pb.Node(id="n1", role=pb.ROLE_WORKER)
    node.description.hostname = "h1"
    first, created = await store.create_once(node)
    assert created
    again = pb.Node(id="n1", role=pb.ROLE_MANAGER)
    stored, created = await store.create_once(again)
    # The stored object is returned as it is; nothing is overwritten.
    assert not created and stored == first and stored.meta.version == first.meta.version
    stale = pb.Node()
    stale.CopyFrom(first)
    stale.meta.version -= 1
    with pytest.raises(Conflict):
        await store.delete_remembered(stale, 60)
    # A refused delete leaves neither a tombstone nor a lease behind.
    assert (await store.create_once(pb.Node(id="n1")))[1] is False
    await store.delete_remembered(first, 2)
    before = await store.revision()
    with pytest.raises(Removed, match="node n1 was removed"):
        await store.create_once(pb.Node(id="n1"))
    assert await store.revision() == before
    await cache.sync()
    assert cache.get(Kind.NODE, "n1") is None  # the watch skips tombstones
    # The tombstone goes with its lease; then the id is free again.
    await asyncio.wait_for(store.wait_deleted(store.keys.tombstone(Kind.NODE, "n1"), before), 30)
    assert (await store.create_once(pb.Node(id="n1")))[1] is True
