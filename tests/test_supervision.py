"""Background loops are supervised: a failure restarts them with backoff, the cache
keeps following etcd after its watch loop dies, and a leader whose write is refused
keeps leading and tries again instead of giving up or spinning."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from shoal import aiotasks
from shoal.manager.election import Election
from shoal.manager.reconciler import Reconciler
from shoal.manager.store import Cache, Create, Kind, Refused, Store

from .helpers import live, make_node, service_spec, until
from .test_orchestration import create_service, nodes


async def test_supervise_restarts_a_failing_loop_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiotasks, "RESTART_MIN_S", 0.01)
    runs: list[float] = []

    async def flaky() -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) < 4:
            raise RuntimeError("boom")

    await asyncio.wait_for(aiotasks.supervise("flaky", flaky), 5)
    assert len(runs) == 4
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[2] > gaps[0]  # backing off


@pytest.mark.integration
async def test_cache_follows_etcd_after_its_watch_loop_fails(
    store: Store, cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiotasks, "RESTART_MIN_S", 0.01)
    real = cache._apply
    failed = []

    def apply_once_broken(item: Any) -> Any:
        if not failed:
            failed.append(item)
            raise ValueError("a bug nobody mapped")
        return real(item)

    monkeypatch.setattr(cache, "_apply", apply_once_broken)
    await store.batch([Create(make_node("n1"))])
    await until(cache, lambda: bool(failed))
    await nodes(store, "n2")
    await cache.sync()
    names = {n.description.hostname for n in cache.list_objects(Kind.NODE)}
    assert {"n1", "n2"} <= names  # the failed change was not lost: resumed, not skipped


@pytest.mark.integration
async def test_a_refused_write_neither_ends_leadership_nor_spins(
    store: Store, cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shoal.manager.reconciler as rec

    monkeypatch.setattr(rec, "REFUSED_BACKOFF_MIN_S", 0.2)
    reconciler = Reconciler(store, cache)
    real = store.batch_chunked
    refused: list[int] = []

    async def refuse_twice(ops: Sequence[Any], fence: Any = None) -> tuple[int, int]:
        if len(refused) < 2:
            refused.append(len(ops))
            raise Refused("etcdserver: request is too large")
        return await real(ops, fence)

    monkeypatch.setattr(store, "batch_chunked", refuse_twice)
    election = Election(store, "m-test", ttl_s=3)
    leading = asyncio.create_task(election.run(reconciler.run))
    try:
        await nodes(store, "n1")
        svc = await create_service(store, service_spec("web", 2))
        await until(cache, lambda: len(live(cache, svc.id)) == 2, 10)
        assert len(refused) == 2
        assert election.is_leader
        assert reconciler.passes < 20  # backed off, did not spin
    finally:
        leading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leading
