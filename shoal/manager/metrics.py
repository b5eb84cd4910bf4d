"""A manager's Prometheus metrics.

Every manager exports its own process metrics and the etcd request times of
its own store. The leader also exports the cluster: gauges computed from the
watch-fed cache at scrape time (one pass over the objects, no etcd read), and
histograms and counters of what it observes in the cache's change stream and
in its reconcile passes. Followers export the cluster series empty, so a sum
over managers counts everything once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any

import grpc.aio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.manager.admission import JoinAdmission
from shoal.manager.session import Traffic
from shoal.manager.store import Cache, Change, Kind
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

# Scheduling and starting take milliseconds to (with image pulls) minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

_UPDATE_OUTCOMES = {
    pb.UpdateStatus.COMPLETED: "completed",
    pb.UpdateStatus.PAUSED: "paused",
    pb.UpdateStatus.ROLLBACK_COMPLETED: "rollback_completed",
    pb.UpdateStatus.ROLLBACK_PAUSED: "rollback_paused",
}
_ROLES = {pb.ROLE_WORKER: "worker", pb.ROLE_MANAGER: "manager"}
_STATUS = {
    pb.NODE_UNKNOWN: "unknown",
    pb.NODE_DOWN: "down",
    pb.NODE_READY: "ready",
    pb.NODE_DISCONNECTED: "disconnected",
}
_AVAILABILITY = {
    pb.AVAILABILITY_ACTIVE: "active",
    pb.AVAILABILITY_PAUSE: "pause",
    pb.AVAILABILITY_DRAIN: "drain",
}


def node_labels(n: pb.Node, live_managers: Container[str]) -> tuple[str, str, str]:
    """(role, status, availability) as words; a manager's status is its presence, as in
    `node ls`."""
    state = n.status.state
    if n.role == pb.ROLE_MANAGER:
        state = pb.NODE_READY if n.id in live_managers else pb.NODE_DOWN
    return (
        _ROLES.get(n.role, "worker"),
        _STATUS.get(state, "unknown"),
        _AVAILABILITY.get(n.spec.availability, "active"),
    )


def task_state_name(state: int) -> str:
    return pb.TaskState.Name(state).lower()  # type: ignore[arg-type]


def now_s() -> float:
    return time.time()


class EtcdTimer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Times every unary etcd call of the store (op = the RPC: Range, Txn, ...)."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method
        op = (method.decode() if isinstance(method, bytes) else str(method)).rpartition("/")[2]
        start = time.perf_counter()
        call = await continuation(details, request)
        try:
            await call
        finally:
            self.histogram.labels(op).observe(time.perf_counter() - start)
        return call


class ClusterCollector(Collector):
    """The leader's cluster gauges, computed from the cache when scraped."""

    def __init__(self, cache: Cache, is_leader: Callable[[], bool]) -> None:
        self.cache = cache
        self.is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "shoal_service_replicas",
            "Tasks of a service: desired (to run), running, healthy (running, and "
            "healthy if the service has a health check)",
            labels=["service", "state"],
        )
        tasks = GaugeMetricFamily("shoal_tasks", "Tasks by observed state", labels=["state"])
        nodes = GaugeMetricFamily("shoal_nodes", "Nodes", labels=["role", "status", "availability"])
        if self.is_leader():
            self._services(replicas, tasks)
            self._nodes(nodes)
        yield from (replicas, tasks, nodes)

    def _services(self, replicas: GaugeMetricFamily, tasks: GaugeMetricFamily) -> None:
        by_state: Tally[int] = Tally()
        for service in self.cache.list_objects(Kind.SERVICE):
            desired = running = healthy = 0
            for t in self.cache.tasks_of_service(service.id):
                by_state[t.status.state] += 1
                if t.desired_state != pb.RUNNING:
                    continue
                desired += 1
                if t.status.state == pb.RUNNING:
                    running += 1
                    healthy += t.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)
            name = service.spec.annotations.name
            replicas.add_metric([name, "desired"], desired)
            replicas.add_metric([name, "running"], running)
            replicas.add_metric([name, "healthy"], healthy)
        for state in pb.TaskState.values():
            tasks.add_metric([task_state_name(state)], by_state.get(state, 0))

    def _nodes(self, nodes: GaugeMetricFamily) -> None:
        live = self.cache.managers()
        counts: Tally[tuple[str, str, str]] = Tally()
        for n in self.cache.list_objects(Kind.NODE):
            counts[node_labels(n, live)] += 1
        for labels, count in sorted(counts.items()):
            nodes.add_metric(list(labels), count)


class JoinsCollector(Collector):
    """This manager's join queue and its cache's re-lists (the hardening's counters)."""

    def __init__(self, admission: JoinAdmission, cache: Cache) -> None:
        self.admission = admission
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("shoal_joins_waiting", "Joins queued for a slot")
        waiting.add_metric([], self.admission.waiting)
        joins = CounterMetricFamily(
            "shoal_joins", "Join requests admitted, and refused (bad tokens)", labels=["result"]
        )
        joins.add_metric(["admitted"], self.admission.admitted)
        joins.add_metric(["refused"], self.admission.refused)
        resyncs = CounterMetricFamily(
            "shoal_watch_resyncs", "Times the cache's watch fell behind etcd's compaction"
        )
        resyncs.add_metric([], self.cache.resyncs)
        yield from (waiting, joins, resyncs)


class SessionsCollector(Collector):
    """gRPC messages over the agents' sessions held by this manager: what a task costs
    the manager is mostly per message, so messages per task is the figure to watch."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic

    def collect(self) -> Iterator[Metric]:
        for name, counts, what in (
            ("sent", self.traffic.sent, "to agents"),
            ("received", self.traffic.received, "from agents"),
        ):
            family = CounterMetricFamily(
                f"shoal_dispatcher_messages_{name}",
                f"gRPC messages {what} over their sessions, by kind (a batch counts once)",
                labels=["kind"],
            )
            for kind, n in sorted((str(k), n) for k, n in counts.items()):
                family.add_metric([kind], n)
            yield family


class ManagerMetrics:
    """The registry one manager serves at /metrics, and what feeds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.etcd_seconds = Histogram(
            "shoal_etcd_request_seconds",
            "etcd requests of this manager's store, by RPC",
            ["op"],
            buckets=ETCD_BUCKETS,
            registry=r,
        )
        self.scheduling = Histogram(
            "shoal_scheduling_latency_seconds",
            "A task's creation to its assignment to a node",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.task_start = Histogram(
            "shoal_task_start_seconds",
            "A task's assignment to its agent reporting it running (pull included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconcile = Histogram(
            "shoal_reconcile_seconds",
            "One reconcile pass of the leader: decide, schedule, write",
            buckets=ETCD_BUCKETS,
            registry=r,
        )
        self.leader_changes = Counter(
            "shoal_leader_changes",
            "Times this manager became the leader (summed over managers: leader changes)",
            registry=r,
        )
        self.restarts = Counter(
            "shoal_task_restarts", "Tasks replaced by the leader, by reason", ["reason"], registry=r
        )
        self.rolling_updates = Counter(
            "shoal_rolling_updates",
            "Rolling updates that ended, by outcome",
            ["outcome"],
            registry=r,
        )
        self.leading = False
        # task id -> when it was seen assigned (s), until it is seen running.
        self._assigned_at: dict[str, float] = {}
        self.etcd_timer = EtcdTimer(self.etcd_seconds)

    def attach(self, cache: Cache) -> None:
        """Once the cache exists: the cluster gauges."""
        self.registry.register(ClusterCollector(cache, lambda: self.leading))

    def watch_joins(self, admission: JoinAdmission, cache: Cache) -> None:
        self.registry.register(JoinsCollector(admission, cache))

    def watch_sessions(self, traffic: Traffic) -> None:
        self.registry.register(SessionsCollector(traffic))

    def became_leader(self) -> None:
        self.leading = True
        self.leader_changes.inc()
        self._assigned_at.clear()

    def lost_leadership(self) -> None:
        self.leading = False
        self._assigned_at.clear()

    def on_pass(self, seconds: float, restarts: dict[str, int]) -> None:
        """A reconcile pass of the leader that wrote its plan."""
        self.reconcile.observe(seconds)
        for reason, n in restarts.items():
            self.restarts.labels(reason).inc(n)

    async def observe(self, cache: Cache) -> None:
        """Follows the cache's changes (runs for the manager's life)."""
        with cache.subscribe() as sub:
            while True:
                resync, changes = await sub.next()
                if resync:
                    self._assigned_at.clear()
                if self.leading:
                    self.observe_changes(changes, now_s())

    def observe_changes(self, changes: Iterable[Change], now: float) -> None:
        for c in changes:
            if c.kind == Kind.TASK:
                self._task(c, now)
            elif c.kind == Kind.SERVICE and c.obj is not None:
                self._service(c)

    def _task(self, c: Change, now: float) -> None:
        t: pb.Task | None = c.obj  # type: ignore[assignment]
        old: pb.Task | None = c.old  # type: ignore[assignment]
        if t is None:
            self._assigned_at.pop(c.id, None)
            return
        if t.node_id and (old is None or not old.node_id):
            # Scheduled: the task's creation (first write) to now.
            created = t.meta.created_at_ms / 1000 or now
            self.scheduling.observe(max(0.0, now - created))
            if t.status.state < pb.RUNNING:
                self._assigned_at[t.id] = now
        if t.status.state >= pb.RUNNING:
            assigned = self._assigned_at.pop(t.id, None)
            if assigned is not None and t.status.state == pb.RUNNING:
                self.task_start.observe(max(0.0, now - assigned))

    def _service(self, c: Change) -> None:
        s: pb.Service = c.obj  # type: ignore[assignment]
        old: pb.Service | None = c.old  # type: ignore[assignment]
        state = s.update_status.state
        if state in _UPDATE_OUTCOMES and (old is None or old.update_status.state != state):
            self.rolling_updates.labels(_UPDATE_OUTCOMES[state]).inc()


async def run_observer(metrics: ManagerMetrics, cache: Cache) -> None:
    try:
        await metrics.observe(cache)
    except asyncio.CancelledError:
        raise
    except Exception:  # metrics must never take a manager down
        log.exception("metrics observer failed")
