"""Fixtures: a real etcd per test on random loopback ports, a store and a cache on it."""

from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.procs import ManagerProcess, WorkerProcess, free_manager_addr
from shoal.lab.registry import Registry
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Cache, EtcdConnection, Keys, Store

PR_SET_CHILD_SUBREAPER = 36
# Fixtures that start a daemon (or need root): a test using one is `integration`.
DAEMON_FIXTURES = {
    "etcd", "store", "cache", "managers", "workers", "registry", "busybox_image", "containerd",
    "root", "host_busybox",
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`-m "not integration"` must be a fast run: a test that uses a daemon fixture is
    marked `integration` even where its module forgot to say so. (Tests that start
    daemons without these fixtures carry the marker themselves.)"""
    for item in items:
        if DAEMON_FIXTURES & set(getattr(item, "fixturenames", ())):
            if item.get_closest_marker("integration") is None:
                item.add_marker(pytest.mark.integration)


class Bounds:
    """Upper bounds on measured times. A test that takes `bounds` runs once in the
    default run, printing its times, and once more only with `-m perf`, where the
    bounds are asserted: a loaded CI machine must not fail on speed."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked

    def check(self, took: float, limit: float, what: str) -> None:
        print(f"\n{what}: {took:.2f}s (bound {limit}s{'' if self.checked else ', unchecked'})")
        if self.checked:
            assert took <= limit, f"{what}: {took:.2f}s, bound {limit}s"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bounds" in metafunc.fixturenames:
        metafunc.parametrize(
            "bounds",
            [False, pytest.param(True, marks=pytest.mark.perf)],
            ids=["ci", "perf"],
            indirect=True,
        )


@pytest.fixture
def bounds(request: pytest.FixtureRequest) -> Bounds:
    return Bounds(bool(request.param))


def require(ok: bool, what: str) -> None:
    """A missing prerequisite fails the test: a CI run that cannot test must not look green."""
    if not ok:
        pytest.fail(f"needs {what}", pytrace=False)


@pytest.fixture(scope="session")
def root() -> None:
    """Network namespaces, containerd and the testbed need root."""
    require(os.geteuid() == 0, "root (network namespaces)")


@pytest.fixture(scope="session")
def host_busybox(root: None) -> str:
    """The host's busybox: the overlay tests' servers and clients inside task namespaces."""
    path = shutil.which("busybox")
    require(path is not None, "busybox on the host (apt-get install busybox-static)")
    assert path is not None
    return path


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
    s = Store(EtcdConnection([etcd.endpoint], etcd.tls), Keys(f"/test-{uuid.uuid4().hex[:8]}"))
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
def manager(
    tmp_path: Path, etcd: EmbeddedEtcd, managers: list[ManagerProcess]
) -> Iterator[ManagerProcess]:
    """One manager (no workers) on the test's etcd."""
    m = ManagerProcess(tmp_path / "m1", *etcd.manager_args(), "--listen-addr", free_manager_addr())
    managers.append(m.start())
    yield m


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
def registry(root: None) -> Iterator[Registry]:
    require(os.path.exists("/usr/bin/docker-registry"), "Debian's docker-registry")
    with Registry() as r:
        yield r


@pytest.fixture(scope="session")
def busybox_image(registry: Registry) -> str:
    """The tiny busybox image, pushed to the session's registry."""
    return push_image(registry.addr, "busybox", "1")


@pytest.fixture(scope="session")
def containerd(root: None) -> Iterator[Containerd]:
    require(os.path.exists("/usr/bin/containerd"), "containerd + runc (/usr/bin/containerd)")
    with Containerd() as c:
        yield c
