"""Cache.wait_for under load: timeouts and cancellations never break it (the 1,000-node
join run died on `RuntimeError: Lock is not acquired` from a Condition under wait_for)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aetcd import rpc

from shoal.manager.store import Cache, Unavailable

pytestmark = pytest.mark.integration


async def test_wait_for_survives_timeouts_and_cancellation(cache: Cache) -> None:
    target = cache.revision + 3
    # Hundreds of waiters that time out, and hundreds cancelled from outside.
    timing_out = [asyncio.create_task(cache.wait_for(target + 10_000, 0.05)) for _ in range(300)]
    cancelled = [asyncio.create_task(cache.wait_for(target)) for _ in range(300)]
    patient = [asyncio.create_task(cache.wait_for(target)) for _ in range(300)]
    await asyncio.sleep(0.01)
    for t in cancelled:
        t.cancel()
    results = await asyncio.gather(*timing_out, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), {type(r) for r in results}
    for t in cancelled:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    for i in range(3):
        await cache.store.conn.kv.Put(rpc.PutRequest(key=f"/unrelated/{i}".encode(), value=b"x"))
    # The patient waiters return once the cache has seen the writes: the keys are not
    # Shoal's, so it is the progress key the cache writes (never etcd's progress
    # notifications, which etcd 3.4.23 may send ahead of events) that moves it on.
    await asyncio.wait_for(asyncio.gather(*patient), 10)
    assert cache.revision >= target
    marker = await cache.store.conn.kv.Range(rpc.RangeRequest(key=cache.store.keys.progress))
    assert marker.kvs and marker.kvs[0].mod_revision > target - 3
