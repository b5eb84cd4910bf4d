"""Fixtures: a real etcd per test on random loopback ports, a store and a cache on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Cache, EtcdConnection, Keys, Store


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EmbeddedEtcd]:
    server = EmbeddedEtcd(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    # A per-test key prefix too, so a leak between tests would show.
    s = Store(EtcdConnection([etcd.endpoint]), Keys(f"/test-{uuid.uuid4().hex[:8]}"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def cache(store: Store) -> AsyncIterator[Cache]:
    c = Cache(store)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()
