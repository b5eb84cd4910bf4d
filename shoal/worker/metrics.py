"""An agent's Prometheus metrics, read when scraped (no cAdvisor).

Per running task: CPU and memory from the container's cgroup files (v1 or v2),
network bytes from its network namespace (/proc/PID/net/dev). Image pulls and
session reconnects from counters the runtime and the session keep. Also the
node's own CPU/memory, sent with heartbeats for the web view.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat_field(path: Path, name: str) -> int | None:
    """A `name value` line of a cgroup stat file (memory.stat, cpu.stat)."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return None


@dataclass(frozen=True)
class CgroupUsage:
    cpu_seconds: float | None
    memory_bytes: int | None


def cgroup_usage(rel: str, root: Path = CGROUP_ROOT) -> CgroupUsage:
    """CPU time and working-set memory (usage minus inactive file cache, like
    `docker stats`) of the cgroup at `rel`."""
    rel = rel.lstrip("/")
    if (root / "cgroup.controllers").exists():  # v2: one hierarchy
        d = root / rel
        usec = _stat_field(d / "cpu.stat", "usage_usec")
        mem = _read_int(d / "memory.current")
        inactive = _stat_field(d / "memory.stat", "inactive_file") or 0
    else:  # v1: a hierarchy per controller
        ns = _read_int(root / "cpuacct" / rel / "cpuacct.usage")
        usec = ns // 1000 if ns is not None else None
        mem_dir = root / "memory" / rel
        mem = _read_int(mem_dir / "memory.usage_in_bytes")
        inactive = _stat_field(mem_dir / "memory.stat", "total_inactive_file") or 0
    return CgroupUsage(
        usec / 1e6 if usec is not None else None,
        max(0, mem - inactive) if mem is not None else None,
    )


def netns_bytes(pid: int) -> tuple[int, int] | None:
    """(received, sent) bytes over every interface but loopback of PID's network namespace."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return None
    rx = tx = 0
    for line in lines:
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            continue
        values = fields.split()
        rx += int(values[0])
        tx += int(values[8])
    return rx, tx


class AgentCollector(Collector):
    """Reads the tasks' cgroups and namespaces at scrape time."""

    def __init__(self, worker: Any, runtime: Any, session: Any) -> None:
        self.worker = worker
        self.runtime = runtime
        self.session = session

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "task"]
        cpu = CounterMetricFamily(
            "shoal_task_cpu_seconds", "CPU time of a task's container", labels=labels
        )
        mem = GaugeMetricFamily(
            "shoal_task_memory_bytes",
            "Memory of a task's container (working set: without inactive file cache)",
            labels=labels,
        )
        net = CounterMetricFamily(
            "shoal_task_network_bytes",
            "Bytes through a task's network namespace (all interfaces but lo)",
            labels=[*labels, "direction"],
        )
        cgroup_of: Callable[[str], str] | None = getattr(self.runtime, "cgroup_path", None)
        for task_id, runner in list(self.worker.runners.items()):
            task: pb.Task = runner.task
            if task.status.state != pb.RUNNING:
                continue
            key = [task.service_name, task_id]
            if cgroup_of is not None:
                usage = cgroup_usage(cgroup_of(task_id))
                if usage.cpu_seconds is not None:
                    cpu.add_metric(key, usage.cpu_seconds)
                if usage.memory_bytes is not None:
                    mem.add_metric(key, usage.memory_bytes)
            pid = task.status.container.pid
            counts = netns_bytes(pid) if pid > 0 else None
            if counts is not None:
                net.add_metric([*key, "rx"], counts[0])
                net.add_metric([*key, "tx"], counts[1])
        yield from (cpu, mem, net)
        yield from self._pulls()
        reconnects = CounterMetricFamily(
            "shoal_session_reconnects", "Agent sessions established after the first"
        )
        reconnects.add_metric([], self.session.reconnects)
        yield reconnects
        up = GaugeMetricFamily("shoal_session_up", "1 while the agent has a manager session")
        up.add_metric([], 1 if self.session.connected.is_set() else 0)
        yield up

    def _pulls(self) -> Iterator[Metric]:
        stats = getattr(self.runtime, "pull_stats", None)
        if stats is None:
            return
        for name, doc, value in (
            ("shoal_image_pulls", "Image pulls (from a registry)", stats.pulls),
            ("shoal_image_pull_bytes", "Bytes of image layers pulled", stats.bytes),
            ("shoal_image_pull_seconds", "Time spent pulling images", stats.seconds),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


def agent_registry(worker: Any, runtime: Any, session: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(AgentCollector(worker, runtime, session))
    return registry


class NodeUsageSampler:
    """The node's CPU busy fraction since the last sample, and its memory in use."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._last: tuple[int, int] | None = None

    def _cpu_times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies of all CPUs."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            first = (self.proc / "stat").read_text().split("\n", 1)[0]
            values = [int(v) for v in first.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])
            return total - idle, total
        return None

    def __call__(self) -> dpb.NodeUsage:
        usage = dpb.NodeUsage()
        now = self._cpu_times()
        if now is not None and self._last is not None and now[1] > self._last[1]:
            usage.cpu_fraction = (now[0] - self._last[0]) / (now[1] - self._last[1])
        self._last = now
        total = _meminfo(self.proc, "MemTotal:")
        available = _meminfo(self.proc, "MemAvailable:")
        if total is not None:
            usage.memory_total_bytes = total
            usage.memory_used_bytes = total - (available or 0)
        return usage


def _meminfo(proc: Path, key: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return None
