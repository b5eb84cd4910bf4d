"""A manager's metrics and event journal against a real etcd and the watch-fed cache."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.manager.admission import JoinAdmission
from shoal.manager.events import Journal
from shoal.manager.ids import new_id
from shoal.manager.metrics import ManagerMetrics, run_observer
from shoal.manager.store import Cache, Create, Kind, Store
from shoal.proto import objects_pb2 as pb


def samples(metrics: ManagerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def service(name: str) -> pb.Service:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.replicated.replicas = 2
    return pb.Service(id=new_id(), spec=spec, spec_version=1)


async def test_gauges_histograms_and_outcomes(store: Store, cache: Cache) -> None:
    metrics = ManagerMetrics()
    metrics.attach(cache)
    observer = asyncio.create_task(run_observer(metrics, cache))
    try:
        svc = await store.create(service("web"))
        # A follower exports the cluster series empty.
        assert ("shoal_service_replicas", (("service", "web"), ("state", "desired"))) not in (
            samples(metrics)
        )
        metrics.became_leader()
        t1 = pb.Task(id=new_id(), service_id=svc.id, service_name="web", slot=1,
                     desired_state=pb.RUNNING, spec_version=1)  # fmt: skip
        t1.status.state = pb.PENDING
        t2 = pb.Task(id=new_id(), service_id=svc.id, service_name="web", slot=2,
                     desired_state=pb.RUNNING, spec_version=1, node_id="n1")  # fmt: skip
        t2.status.state = pb.ASSIGNED
        await store.batch([Create(t1), Create(t2)])
        await cache.sync()
        t1 = cache.get(Kind.TASK, t1.id)
        assigned = pb.Task()
        assigned.CopyFrom(t1)
        assigned.node_id = "n1"
        assigned.status.state = pb.ASSIGNED
        await store.update(assigned)
        running = pb.Task()
        running.CopyFrom(cache.get(Kind.TASK, t2.id))
        running.status.state = pb.RUNNING
        running.status.health = pb.HEALTH_UNHEALTHY
        await store.update(running)
        done = pb.Service()
        done.CopyFrom(cache.get(Kind.SERVICE, svc.id))
        done.update_status.state = pb.UpdateStatus.ROLLBACK_COMPLETED
        await store.update(done)
        await cache.sync()
        await asyncio.sleep(0.1)  # the observer's turn
        got = samples(metrics)
        web = lambda state: got[("shoal_service_replicas", (("service", "web"), ("state", state)))]  # noqa: E731
        assert (web("desired"), web("running"), web("healthy")) == (2, 1, 0)
        assert got[("shoal_tasks", (("state", "running"),))] == 1
        assert got[("shoal_tasks", (("state", "assigned"),))] == 1
        assert got[("shoal_scheduling_latency_seconds_count", ())] == 2
        assert got[("shoal_task_start_seconds_count", ())] == 1
        assert got[("shoal_rolling_updates_total", (("outcome", "rollback_completed"),))] == 1
        assert got[("shoal_leader_changes_total", ())] == 1
        metrics.on_pass(0.01, {"failed": 2, "node": 1})
        got = samples(metrics)
        assert got[("shoal_task_restarts_total", (("reason", "failed"),))] == 2
        assert got[("shoal_reconcile_seconds_count", ())] == 1
    finally:
        observer.cancel()


async def test_journal_replays_and_follows(store: Store, cache: Cache) -> None:
    journal = Journal(cache)
    runner = asyncio.create_task(journal.run())
    try:
        a = await store.create(service("a"))
        await store.delete(a)
        await cache.sync()
        await asyncio.sleep(0.05)
        stream = journal.stream(since_revision=a.meta.version, types=frozenset({"service"}))
        first, second = await anext(stream)
        assert (first.action, first.name, first.revision) == ("create", "a", a.meta.version)
        assert (second.action, second.name) == ("remove", "a")
        b = await store.create(service("b"))
        (live,) = await asyncio.wait_for(anext(stream), 5)
        assert (live.action, live.id, live.type) == ("create", b.id, "service")
        await stream.aclose()
    finally:
        runner.cancel()


async def test_join_counters(cache: Cache) -> None:
    admission = JoinAdmission(concurrency=1)
    metrics = ManagerMetrics()
    metrics.watch_joins(admission, cache)

    async def join(source: str) -> None:
        async with admission.admit(source):
            pass

    async with admission.admit("10.0.0.1"):
        second = asyncio.create_task(join("10.0.0.2"))
        await asyncio.sleep(0.05)
        assert samples(metrics)[("shoal_joins_waiting", ())] == 1  # behind the first
    await second
    admission.failed("10.0.0.2")
    got = samples(metrics)
    assert got[("shoal_joins_total", (("result", "admitted"),))] == 2
    assert got[("shoal_joins_total", (("result", "refused"),))] == 1
    assert got[("shoal_joins_waiting", ())] == 0
    assert got[("shoal_watch_resyncs_total", ())] == 0
