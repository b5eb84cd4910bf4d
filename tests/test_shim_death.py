"""A container's runc shim killed under it, on a real containerd.

containerd cleans up after a dead shim by killing its container; what it answers
for that task meanwhile is "ttrpc: closed". The runtime must report the container
as killed (so the agent replaces it), and removing it must leave nothing behind
(record, snapshot), while a container in another shim carries on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from shoal.lab.containerd import Containerd
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.containerd import KILLED, ContainerdRuntime

pytestmark = pytest.mark.integration

COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running, not a zombie (the test session adopts orphans: conftest.py)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


async def gone(pid: int, limit_s: float = 10) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:  # a process's end has no event to wait on here
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_killed_shim_kills_its_container_and_leaves_nothing_behind(
    containerd: Containerd, busybox_image: str, tmp_path: Path
) -> None:
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    ids = ["victim", "other"]
    try:
        await rt.pull(busybox_image)
        pids = []
        for c in ids:
            await rt.create(
                ContainerConfig(
                    container_id=c, image=busybox_image, command=COMMAND, log_path=tmp_path / c
                )
            )
            pids.append(await rt.start(c))
        waiting = asyncio.ensure_future(rt.wait("victim"))
        shim = int(stat_fields(pids[0])[1])  # the container's parent: its shim
        os.kill(shim, signal.SIGKILL)
        assert await asyncio.wait_for(waiting, 20) == KILLED
        assert await gone(pids[0])
        state = await rt.state("victim")  # the task stopped, or dropped by containerd already
        assert state is not None and state.status in ("stopped", "created"), state
        await rt.stop("victim", 1)
        await rt.remove("victim")
        assert await rt.list() == ["other"]
        state = await rt.state("other")
        assert state is not None and state.status == "running" and alive(pids[1])
    finally:
        for c in ids:
            await rt.stop(c, 0.5)
            await rt.remove(c)
        await rt.close()
