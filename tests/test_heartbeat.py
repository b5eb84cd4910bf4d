"""Heartbeats. An agent's are left out while status reports keep the node alive (each
report counts as one on the manager, and carries the node's usage once a period),
never leaving the manager without a message for longer than a period."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from shoal import defaults
from shoal.manager.dispatcher import MAX_HEARTBEATS_PER_S, Dispatcher
from shoal.manager.session import AgentSession
from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker import session as agent_session

from . import virtualtime

PERIOD_S = 0.2
# The tests run on a virtual clock (tests/virtualtime.py): no scheduling slack to allow
# for but the batching of reports.
SLACK_S = agent_session.REPORT_BATCH_S + 0.001


def make_session() -> agent_session.Session:
    s = agent_session.Session(
        identity=lambda: None,  # type: ignore[arg-type,return-value]
        managers=["127.0.0.1:1"],
        description=pb.NodeDescription,
    )
    s.usage = lambda: dpb.NodeUsage(cpu_fraction=0.5)
    return s


async def timeline(
    s: agent_session.Session, duration_s: float, report_every_s: float
) -> list[tuple[float, str]]:
    """(time, kind) of every message the agent sends within `duration_s`."""
    out: asyncio.Queue[dpb.AgentMessage] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    s._period_s = PERIOD_S
    helpers = [
        asyncio.create_task(s._send_reports(out)),
        asyncio.create_task(s._heartbeat(out)),
    ]
    sent: list[tuple[float, str]] = []

    async def collect() -> None:
        while True:
            msg = await out.get()
            kind = str(msg.WhichOneof("msg"))
            carries = msg.heartbeat.HasField("usage") or msg.statuses.HasField("usage")
            sent.append((loop.time() - start, kind + ("+usage" if carries else "")))

    helpers.append(asyncio.create_task(collect()))
    n = 0
    while loop.time() - start < duration_s:
        if report_every_s:
            s.report(f"t{n}", pb.TaskStatus(state=pb.RUNNING))
            n += 1
        await asyncio.sleep(report_every_s or duration_s)
    for h in helpers:
        h.cancel()
    await asyncio.gather(*helpers, return_exceptions=True)
    return sent


def test_idle_agent_heartbeats_every_period() -> None:
    sent = virtualtime.run(timeline(make_session(), 2.0, 0))
    beats = [t for t, kind in sent if kind == "heartbeat+usage"]
    assert 9 <= len(beats) == len(sent) <= 10
    assert all(b - a < PERIOD_S + SLACK_S for a, b in itertools.pairwise(beats))


def test_reports_stand_in_for_heartbeats_but_never_leave_a_gap() -> None:
    sent = virtualtime.run(timeline(make_session(), 3.0, PERIOD_S / 2))
    beats = [t for t, kind in sent if kind.startswith("heartbeat")]
    reports = [t for t, kind in sent if kind.startswith("statuses")]
    assert len(reports) >= 20
    # No heartbeat at all instead of one each period (~15 in 3 s).
    assert beats == []
    # The manager never waits more than a period (and scheduling slack) for a message,
    # nor more than a period and a report's interval for the node's usage figures.
    times = sorted(t for t, _ in sent)
    assert all(b - a < PERIOD_S + SLACK_S for a, b in itertools.pairwise(times))
    usage = [t for t, kind in sent if kind.endswith("+usage")]
    assert usage[0] < SLACK_S and 3.0 / PERIOD_S * 2 / 3 <= len(usage) <= 3.0 / PERIOD_S + 1
    assert all(b - a < PERIOD_S * 1.5 + SLACK_S for a, b in itertools.pairwise(usage))


class _ClusterDefaults:
    """What the dispatcher reads of the cache for heartbeat periods."""

    def cluster_spec(self) -> pb.ClusterSpec:
        return defaults.cluster_spec()


def test_manager_stretches_every_sessions_period_as_its_fleet_grows() -> None:
    """5,000 agents registering one after another: the early ones, told 5 s, are told
    the longer period later, so the fleet stays near MAX_HEARTBEATS_PER_S."""
    d = Dispatcher(store=None, cache=_ClusterDefaults())  # type: ignore[arg-type]
    for i in range(5000):
        node_id = f"n{i}"
        d.sessions[node_id] = AgentSession(node_id)
        d._periods[node_id] = d.heartbeat_period_ms()
        d._stretch_periods()
    rate = sum(1000 / p for p in d._periods.values())
    assert rate <= MAX_HEARTBEATS_PER_S * 1.5, rate
    first = d.sessions["n0"]
    told = [m.session.heartbeat_period_ms for m in first.outbox._queue if m is not None]  # type: ignore[attr-defined]
    assert told and told[-1] == d._periods["n0"] > defaults.HEARTBEAT_PERIOD_MS
    # Not one message per session per registration: a handful of announcements.
    assert len(told) <= 5


def test_an_agent_that_speaks_as_its_silence_is_noticed_keeps_its_session() -> None:
    """The expiry the down timer schedules runs a loop pass later: a message in between
    counts, and the timer armed for it is the one that may fire later (not a leftover
    that would close a healthy session)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        d = Dispatcher(store=None, cache=_ClusterDefaults())  # type: ignore[arg-type]
        marked_down: list[str] = []

        async def update_node(node_id: str, change: object) -> None:
            marked_down.append(node_id)

        d._update_node = update_node  # type: ignore[method-assign]
        session = d.sessions["n1"] = AgentSession("n1")
        d._arm_timer("n1")
        window = d._down_after_s("n1")
        await asyncio.sleep(window / 2)
        d._seen["n1"] = loop.time() - window  # as if silent for a whole window
        d._timers.pop("n1").cancel()
        d._check_silence("n1")  # schedules the expiry...
        d._arm_timer("n1")  # ...and the agent speaks before it runs
        await asyncio.sleep(window / 2)
        assert (d.sessions.get("n1"), session.closed, marked_down) == (session, False, [])
        # Positive control: silence from here on is noticed, once.
        await asyncio.sleep(window * 2)
        assert ("n1" in d.sessions, session.closed, marked_down) == (False, True, ["n1"])

    virtualtime.run(scenario())


def test_manager_takes_the_nodes_usage_from_reports_that_stand_in_for_heartbeats() -> None:
    async def scenario() -> None:
        d = Dispatcher(store=None, cache=_ClusterDefaults())  # type: ignore[arg-type]
        queued: list[str] = []
        d.statuses.queue = lambda node_id, updates: queued.append(node_id)  # type: ignore[method-assign]
        session = d.sessions["n1"] = AgentSession("n1")
        report = dpb.TaskStatusBatch(usage=dpb.NodeUsage(cpu_fraction=0.25))

        async def agent() -> AsyncIterator[dpb.AgentMessage]:
            yield dpb.AgentMessage(statuses=dpb.TaskStatusBatch())
            assert "n1" not in d.usage  # a report without figures leaves them
            yield dpb.AgentMessage(statuses=report)

        await d._read(session, agent())
        assert (queued, d.usage["n1"].cpu_fraction) == (["n1", "n1"], 0.25)
        for timer in d._timers.values():
            timer.cancel()

    virtualtime.run(scenario())
