"""Shim groups on a real containerd: containers of one group share one runc shim.

What grouping must not change: a killed container leaves its siblings running, logs
still reach their files, removing the last container of a group ends its shim (no
leak), a containerd restart keeps the group's containers supervised, and a container
made while its group's last one is removed (the shim shutting down) still starts.
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
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.containerd import KILLED, ContainerdRuntime
from shoal.worker.taskspec import SHIM_GROUP_SIZE, SHIM_LANES, shim_group

pytestmark = pytest.mark.integration

COMMAND = ["sh", "-c", "echo hello from $HOSTNAME; trap 'exit 0' TERM; sleep 3600 & wait"]


def shim_of(pid: int) -> int:
    """The shim of a container: its init's parent (the shim reaps it)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running, not a zombie (the test session adopts orphans: conftest.py)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pid: int, limit_s: float = 10) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:  # a process's end has no event to wait on here
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def clean(rt: ContainerdRuntime, ids: list[str]) -> None:
    for c in ids:
        await rt.stop(c, 0.5)
        await rt.remove(c)
    await rt.close()


async def run(rt: ContainerdRuntime, image: str, root: Path, cid: str, group: str) -> int:
    await rt.create(
        ContainerConfig(
            container_id=cid,
            image=image,
            command=COMMAND,
            hostname=cid,
            log_path=root / f"{cid}.log",
            shim_group=group,
        )
    )
    return await rt.start(cid)


def test_tasks_are_grouped_by_service_and_slot() -> None:
    def group(slot: int, service: str = "svc") -> str:
        return shim_group(pb.Task(id="t", service_id=service, slot=slot))

    block = SHIM_LANES * SHIM_GROUP_SIZE
    groups = [group(s) for s in range(1, block + 1)]
    # The first slots go to different shims (created side by side), ...
    assert len(set(groups[:SHIM_LANES])) == SHIM_LANES
    # ... each shim takes at most SHIM_GROUP_SIZE of them, ...
    assert all(groups.count(g) == SHIM_GROUP_SIZE for g in groups)
    assert group(1) == group(1 + SHIM_LANES)
    # ... the next block of slots has shims of its own, and so does every service.
    assert group(block + 1) not in groups
    assert group(1, "other") not in groups
    assert group(0) == ""  # a global task: a shim of its own


async def test_a_group_shares_one_shim_and_outlives_a_killed_member(
    containerd: Containerd, busybox_image: str, tmp_path: Path
) -> None:
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    ids = ["a", "b", "c", "alone"]
    try:
        await rt.pull(busybox_image)
        pids = dict(
            zip(
                ids,
                await asyncio.gather(
                    *(run(rt, busybox_image, tmp_path, c, "" if c == "alone" else "g") for c in ids)
                ),
                strict=True,
            )
        )
        shims = {c: shim_of(p) for c, p in pids.items()}
        assert shims["a"] == shims["b"] == shims["c"] != shims["alone"]
        for c in ids:  # each container's output reaches its own log file
            deadline = time.monotonic() + 10
            log = tmp_path / f"{c}.log"
            while f"hello from {c}" not in (log.read_text() if log.exists() else ""):
                assert time.monotonic() < deadline, f"{c}: no log line"
                await asyncio.sleep(0.05)
        os.kill(pids["a"], signal.SIGKILL)
        assert await asyncio.wait_for(rt.wait("a"), 10) == 128 + signal.SIGKILL
        for c in ("b", "c"):
            state = await rt.state(c)
            assert state is not None and state.status == "running", state
        await rt.remove("a")
        assert alive(shims["a"])  # b and c still in it
        # A replacement joins the group's shim rather than starting one.
        assert shim_of(await run(rt, busybox_image, tmp_path, "a2", "g")) == shims["a"]
        for c in ("b", "c", "a2"):
            await rt.stop(c, 5)
            await rt.remove(c)
        assert await gone(shims["a"]), "the group's shim outlived its last container"
        assert alive(shims["alone"])
        await rt.stop("alone", 5)
        await rt.remove("alone")
        assert await gone(shims["alone"])
    finally:
        await clean(rt, [*ids, "a2"])


async def test_a_member_made_while_the_last_one_goes_still_starts(
    containerd: Containerd, busybox_image: str, tmp_path: Path
) -> None:
    """The shim exits once its last container is deleted; a container of the same
    group started meanwhile may have found that shim still answering."""
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    before = set(containerd.shims())
    made = []
    try:
        await rt.pull(busybox_image)
        await run(rt, busybox_image, tmp_path, "r0", "g")
        made.append("r0")
        for i in range(1, 16):
            old, new = f"r{i - 1}", f"r{i}"
            made.append(new)
            await rt.stop(old, 0.5)
            await rt.create(
                ContainerConfig(
                    container_id=new, image=busybox_image, command=COMMAND, shim_group="g"
                )
            )

            async def remove(old: str = old, i: int = i) -> None:
                await asyncio.sleep(0.002 * i)  # the two meet at varying points
                await rt.remove(old)

            _, pid = await asyncio.gather(remove(), rt.start(new))
            state = await rt.state(new)
            assert state is not None and state.status == "running" and state.pid == pid
        await rt.stop(made[-1], 5)
        await rt.remove(made[-1])
        deadline = time.monotonic() + 10
        while set(containerd.shims()) - before:
            assert time.monotonic() < deadline, "a shim was left behind"
            await asyncio.sleep(0.05)
    finally:
        await clean(rt, made)


async def test_a_containerd_restart_keeps_a_group_supervised(
    busybox_image: str, tmp_path: Path
) -> None:
    with Containerd() as ctd:  # its own: this one is killed under its containers
        rt = ContainerdRuntime(str(ctd.socket), "test-restart", tmp_path)
        try:
            await rt.pull(busybox_image)
            pids = [await run(rt, busybox_image, tmp_path, c, "g") for c in ("x", "y")]
            shim = shim_of(pids[0])
            waiting = asyncio.ensure_future(rt.wait("x"))
            await asyncio.to_thread(ctd.crash_and_restart, 0.5)
            for c, pid in zip(("x", "y"), pids, strict=True):
                state = await rt.state(c)
                assert state is not None and state.status == "running" and state.pid == pid
            os.kill(pids[0], signal.SIGKILL)
            assert await asyncio.wait_for(waiting, 20) == 128 + signal.SIGKILL
            # The shim, found again after the restart, still takes a new member.
            assert shim_of(await run(rt, busybox_image, tmp_path, "z", "g")) == shim
            for c in ("x", "y", "z"):
                await rt.stop(c, 5)
                await rt.remove(c)
            assert await gone(shim)
        finally:
            await clean(rt, ["x", "y", "z"])


async def test_a_shim_crash_takes_its_group_and_only_its_group(
    containerd: Containerd, busybox_image: str, tmp_path: Path
) -> None:
    """The documented trade-off: a killed shim's containers end (containerd cleans up
    after a dead shim), so the agent sees them exit and replaces them; a container
    in another shim is untouched."""
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    ids = ["m1", "m2", "other"]
    try:
        await rt.pull(busybox_image)
        pids = [await run(rt, busybox_image, tmp_path, c, "" if c == "other" else "g") for c in ids]
        waits = [asyncio.ensure_future(rt.wait(c)) for c in ("m1", "m2")]
        os.kill(shim_of(pids[0]), signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.gather(*waits), 20) == [KILLED, KILLED]
        for c, pid in zip(("m1", "m2"), pids, strict=False):
            assert await gone(pid)
            state = await rt.state(c)  # the task stopped, or dropped by containerd already
            assert state is not None and state.status in ("stopped", "created"), state
            await rt.stop(c, 1)
            await rt.remove(c)  # nothing left behind: record and snapshot go too
        assert await rt.list() == ["other"]
        state = await rt.state("other")
        assert state is not None and state.status == "running" and alive(pids[2])
    finally:
        await clean(rt, ids)
