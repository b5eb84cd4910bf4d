"""/metrics and /healthz of a real manager and a real agent (containerd), parsed with
prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.lab.containerd import Containerd
from shoal.lab.images import build_image, dir_layer, push_image
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.lab.registry import Registry
from shoal.manager.etcd_embedded import free_port
from shoal.worker.runtime.containerd import ContainerdRuntime

pytestmark = pytest.mark.integration

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    for got, v in samples.get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            return v
    return None


def health(port: int) -> int:
    """/healthz's status code; 0 while nothing listens yet."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code
    except httpx.ConnectError:
        return 0


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.25)  # scraping is what is tested: a scraper polls


def check_agent(m: ManagerProcess, wport: int) -> None:
    # The agent: the running task's memory and CPU from its cgroup, its network bytes.
    tasks = m.ctl("service", "ps", "web", "--format", "json").json()
    running = [t["id"] for t in tasks if t["desired_state"] == "running"]
    assert len(running) == 1
    agent = scrape(wport)
    mem = value(agent, "shoal_task_memory_bytes", service="web", task=running[0])
    assert mem is not None and mem > 0
    cpu = value(agent, "shoal_task_cpu_seconds_total", service="web", task=running[0])
    assert cpu is not None and cpu >= 0
    assert value(agent, "shoal_task_network_bytes_total", task=running[0], direction="rx") == 0
    # Only running tasks are reported: the scaled-down ones go once their containers stop.
    wait_for(
        lambda: {lbl["task"] for lbl, _ in scrape(wport)["shoal_task_memory_bytes"]} == set(running)
    )
    assert (value(agent, "shoal_image_pulls_total") or 0) >= 1
    assert (value(agent, "shoal_image_pull_bytes_total") or 0) > 0
    assert value(agent, "shoal_session_reconnects_total") == 0
    assert value(agent, "shoal_session_up") == 1


def test_metrics_follow_a_scale_and_show_task_memory(
    tmp_path: Path,
    containerd: Containerd,
    busybox_image: str,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    mport, wport = free_port(), free_port()
    m = ManagerProcess(tmp_path / "m1", "--http-addr", f":{mport}").start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    w = WorkerProcess(
        tmp_path / "w1",
        m.addr,
        token,
        "--hostname",
        "w1",
        "--containerd-socket",
        str(containerd.socket),
        "--http-addr",
        str(wport),
    ).start()
    workers.append(w)

    # Health: the manager leads (a leader is known); the agent has its session.
    wait_for(lambda: health(mport) == 200)
    wait_for(lambda: health(wport) == 200)
    assert "leader" in httpx.get(f"http://127.0.0.1:{mport}/healthz").text

    r = m.ctl(
        "service", "create", "--name", "web", "--image", busybox_image, "--replicas", "2",
        "--stop-grace-period", "1s", "sleep", "1000",
    )  # fmt: skip
    assert r.code == 0, r.err

    def replicas(state: str) -> float | None:
        return value(scrape(mport), "shoal_service_replicas", service="web", state=state)

    wait_for(lambda: replicas("running") == 2)
    samples = scrape(mport)
    assert value(samples, "shoal_service_replicas", service="web", state="desired") == 2
    assert value(samples, "shoal_service_replicas", service="web", state="healthy") == 2
    assert value(samples, "shoal_tasks", state="running") == 2
    assert value(samples, "shoal_nodes", role="worker", status="ready", availability="active") == 1
    assert value(samples, "shoal_nodes", role="manager", status="ready", availability="drain") == 1
    assert (value(samples, "shoal_scheduling_latency_seconds_count") or 0) >= 2
    assert (value(samples, "shoal_task_start_seconds_count") or 0) >= 2
    assert (value(samples, "shoal_etcd_request_seconds_count", op="Txn") or 0) > 0
    assert (value(samples, "shoal_reconcile_seconds_count") or 0) > 0
    assert value(samples, "shoal_leader_changes_total") == 1
    assert value(samples, "process_resident_memory_bytes")
    # The worker's join went through the admission queue; the watch never re-listed.
    assert value(samples, "shoal_joins_total", result="admitted") == 1
    assert value(samples, "shoal_joins_total", result="refused") == 0
    assert value(samples, "shoal_joins_waiting") == 0
    assert value(samples, "shoal_watch_resyncs_total") == 0

    assert m.ctl("service", "scale", "web=3").code == 0
    wait_for(lambda: replicas("running") == 3)
    assert replicas("desired") == 3
    assert m.ctl("service", "scale", "web=1").code == 0
    wait_for(lambda: replicas("running") == 1)
    assert replicas("desired") == 1

    check_agent(m, wport)

    assert m.ctl("service", "rm", "web").code == 0
    wait_for(lambda: value(scrape(mport), "shoal_service_replicas", service="web") is None)


def test_health_says_why_an_agent_is_unhealthy(
    tmp_path: Path,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    mport, wport = free_port(), free_port()
    m = ManagerProcess(tmp_path / "m1", "--http-addr", f"127.0.0.1:{mport}").start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    w = WorkerProcess(
        tmp_path / "w1", m.addr, token, "--runtime", "simulated", "--http-addr", f":{wport}"
    ).start()
    workers.append(w)
    wait_for(lambda: health(wport) == 200)
    m.stop()
    wait_for(lambda: health(wport) == 503)
    assert "no manager session" in httpx.get(f"http://127.0.0.1:{wport}/healthz").text


async def test_a_pull_reports_its_progress_and_totals(
    tmp_path: Path, containerd: Containerd, registry: Registry
) -> None:
    """The layer bytes fetched so far, while an image is pulled (agents report them as
    the task's message, swarmctl shows them): seen part-way, gone when done, counted."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "blob").write_bytes(os.urandom(24 << 20))  # gzip cannot shrink it
    image = push_image(registry.addr, "pullprogress", "1", build_image(dir_layer(tmp_path / "img")))
    rt = ContainerdRuntime(str(containerd.socket), f"shoal-pull-{os.getpid()}", tmp_path / "rt")
    try:
        pull = asyncio.ensure_future(rt.pull(image))
        seen: list[tuple[int, int]] = []
        while not pull.done():
            got = rt.pull_progress(image)
            if got is not None:
                seen.append(got)
            await asyncio.sleep(0.002)
        await pull
        assert rt.pull_progress(image) is None
        total = seen[-1][1]
        assert total > 24 << 20 and all(t == total for _, t in seen)
        assert any(0 < done < total for done, _ in seen), seen[:5]
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        assert rt.pull_stats.pulls == 1 and rt.pull_stats.bytes >= total
    finally:
        await rt.close()
