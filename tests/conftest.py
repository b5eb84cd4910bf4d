"""Fixtures: a real etcd per test on random loopback ports, a store and a cache on it."""

from __future__ import annotations

import ctypes
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.lab.registry import Registry
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Cache, EtcdConnection, Keys, Store

PR_SET_CHILD_SUBREAPER = 36


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


@pytest.fixture(scope="session", autouse=True)
def reap_orphans() -> Iterator[None]:
    """Adopt orphans (the etcd of a kill -9'd manager) and reap them at the end."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    yield
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[list[ManagerProcess]]:
    """Manager processes a test starts; all stopped at the end, also on failure."""
    started: list[ManagerProcess] = []
    try:
        yield started
    finally:
        for m in started:
            m.stop()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker agents a test starts; all stopped at the end, also on failure."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/docker-registry"):
        pytest.skip("needs root and Debian's docker-registry")
    with Registry() as r:
        yield r


@pytest.fixture(scope="session")
def busybox_image(registry: Registry) -> str:
    """The tiny busybox image, pushed to the session's registry."""
    return push_image(registry.addr, "busybox", "1")


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/containerd"):
        pytest.skip("needs root and containerd + runc")
    with Containerd() as c:
        yield c
