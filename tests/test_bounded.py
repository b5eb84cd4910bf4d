"""Memory stays bounded: log readers that fall behind, watch subscribers that fall
behind, and task log files that grow forever."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from shoal.manager.logbuffer import LogBuffer
from shoal.manager.store.cache import Subscription
from shoal.proto import dispatcher_pb2 as dpb
from shoal.worker import logrotate
from shoal.worker.logrotate import LogRotator, rotate
from shoal.worker.logs import stream_log


async def test_log_buffer_drops_past_its_limit_and_says_so() -> None:
    buf = LogBuffer(max_bytes=100)
    for i in range(10):
        buf.put(dpb.LogChunk(task_id="t1", data=f"{i:02d}".encode() * 20))  # 40 bytes each
    buf.put(dpb.LogChunk(done=True))
    got = []
    while True:
        chunk = await buf.get()
        got.append(chunk)
        if chunk is not None and chunk.done:
            break
    data = [c for c in got if c is not None and c.data]
    assert [c.data[:2] for c in data[:2]] == [b"00", b"01"]  # what fitted, in order
    notice = data[2].data.decode()
    assert "320 bytes of logs dropped" in notice  # 8 chunks of 40 bytes
    assert got[-1] is not None and got[-1].done


class _FakeCache:
    _subscribers: set[Subscription] = set()


def test_subscription_backlog_becomes_one_resync(monkeypatch: object) -> None:
    import shoal.manager.store.cache as cache_mod

    sub = Subscription(_FakeCache())  # type: ignore[arg-type]
    limit = cache_mod.MAX_PENDING_CHANGES
    sub.offer(False, [object()] * (limit - 1))  # type: ignore[list-item]
    assert sub.overflows == 0 and sub.pending == limit - 1
    sub.offer(False, [object()] * 2)  # type: ignore[list-item]
    assert sub.overflows == 1 and sub.pending == 0
    resync, changes = sub.drain()
    assert resync is True and changes == []


def test_rotate_keeps_max_files(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    for gen in range(6):
        log.write_text(f"gen{gen}\n")
        rotate(log, max_files=3)
    assert log.read_text() == ""
    assert (tmp_path / "t.log.1").read_text() == "gen5\n"
    assert (tmp_path / "t.log.2").read_text() == "gen4\n"
    assert not (tmp_path / "t.log.3").exists()


async def test_rotator_notices_writes_without_polling(tmp_path: Path) -> None:
    rotator = LogRotator(tmp_path, max_bytes=1000, max_files=2)
    runner = asyncio.create_task(rotator.run())
    await asyncio.sleep(0.05)
    log = tmp_path / "task.log"
    with open(log, "ab") as f:
        f.write(b"x" * 1500)
        f.flush()
        for _ in range(100):
            if (tmp_path / "task.log.1").exists():
                break
            await asyncio.sleep(0.02)
        f.write(b"after\n")  # the writer's open file goes on, from the start
    runner.cancel()
    assert (tmp_path / "task.log.1").stat().st_size == 1500
    assert log.read_bytes().lstrip(b"\0") == b"after\n"


async def test_rotator_without_inotify_polls_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of inotify instances (a per-user limit, 128 by default): the rotator looks at
    sizes now and then instead of raising (and being restarted) again and again."""

    def no_inotify(*_args: object) -> None:
        raise OSError(errno.EMFILE, "inotify_init1 failed")

    monkeypatch.setattr(logrotate, "Inotify", no_inotify)
    monkeypatch.setattr(logrotate, "POLL_EVERY_S", 0.05)
    (tmp_path / "task.log").write_bytes(b"x" * 1500)
    runner = asyncio.create_task(LogRotator(tmp_path, max_bytes=1000, max_files=2).run())
    for _ in range(100):
        if (tmp_path / "task.log.1").exists() or runner.done():
            break
        await asyncio.sleep(0.02)
    assert not runner.done(), runner.exception()
    runner.cancel()
    assert (tmp_path / "task.log.1").stat().st_size == 1500


async def test_following_a_log_goes_on_after_rotation(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_bytes(b"first\n")
    got: list[bytes] = []

    async def send(chunk: dpb.LogChunk) -> None:
        got.append(chunk.data)

    follow = asyncio.create_task(
        stream_log("t", log, dpb.LogRequest(request_id="r", follow=True), send)
    )
    await asyncio.sleep(0.1)
    rotate(log, max_files=2)
    with open(log, "ab") as f:
        f.write(b"second\n")
    for _ in range(100):
        if b"second\n" in b"".join(got):
            break
        await asyncio.sleep(0.02)
    follow.cancel()
    assert b"".join(got) == b"first\nsecond\n"
