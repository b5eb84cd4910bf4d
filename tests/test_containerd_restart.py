"""containerd killed and restarted under running tasks: the containers live on in their
shims, so nothing fails, nothing is replaced, and supervision resumes (a later kill of a
container is still noticed and replaced)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from shoal.worker.runtime.containerd import ContainerdRuntime

from . import test_containers
from .test_containers import Cluster

pytestmark = pytest.mark.integration
cluster = test_containers.cluster  # the fixture, shared


def pids(c: Cluster, tasks: list[dict]) -> dict[str, int]:  # type: ignore[type-arg]
    async def one(t: dict) -> int:  # type: ignore[type-arg]
        rt = ContainerdRuntime(str(c.containerd.socket), f"shoal-{t['node']}")
        try:
            got = await rt.state(t["id"])
            assert got is not None and got.status == "running", (t, got)
            return got.pid
        finally:
            await rt.close()

    return {t["id"]: asyncio.run(one(t)) for t in tasks}


def test_containerd_restart_keeps_tasks_and_supervision(
    cluster: Cluster, busybox_image: str
) -> None:
    c = cluster
    c.ctl(
        "service",
        "create",
        "--name",
        "steady",
        "--image",
        busybox_image,
        "--replicas",
        "3",
        "--stop-grace-period",
        "1s",
        "sleep",
        "1000",
    )
    before = c.live("steady")
    assert len(before) == 3 and all(t["state"] == "running" for t in before)
    pids_before = pids(c, before)

    c.containerd.crash_and_restart()
    # The agents notice (their Wait calls break) and wait again; give the manager a
    # status round trip to show any damage: a scale of another service converges.
    c.ctl("service", "create", "--name", "after", "--image", busybox_image, "sleep", "1000")

    tasks = c.tasks("steady")
    assert not [t for t in tasks if t["state"] in ("failed", "rejected")], tasks
    assert {t["id"] for t in c.live("steady")} == {t["id"] for t in before}
    assert pids(c, c.live("steady")) == pids_before  # the very same processes
    for w in c.workers:
        assert "unexpected failure" not in w.log_text()

    # Supervision resumed over the new containerd: a killed container is replaced.
    victim = before[0]
    os.kill(pids_before[victim["id"]], signal.SIGKILL)
    c.wait(
        lambda: (
            len([t for t in c.live("steady") if t["state"] == "running"]) == 3
            and victim["id"] not in {t["id"] for t in c.live("steady")}
        ),
        30,
    )
    old = next(t for t in c.tasks("steady") if t["id"] == victim["id"])
    assert old["state"] == "failed" and old["exit_code"] == 137
