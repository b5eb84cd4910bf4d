"""An agent's heartbeats: left out while status reports keep the node alive (each
report counts as one on the manager), never leaving the manager without a message
for longer than a period, and never more than HEARTBEAT_EVERY - 1 in a row."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from shoal.proto import dispatcher_pb2 as dpb
from shoal.proto import objects_pb2 as pb
from shoal.worker import session as agent_session

PERIOD_S = 0.2
# Scheduling slack on a loaded machine.
SLACK_S = 0.15


def make_session() -> agent_session.Session:
    return agent_session.Session(
        identity=lambda: None,  # type: ignore[arg-type,return-value]
        managers=["127.0.0.1:1"],
        description=pb.NodeDescription,
    )


async def timeline(
    s: agent_session.Session, duration_s: float, report_every_s: float
) -> list[tuple[float, str]]:
    """(time, kind) of every message the agent sends within `duration_s`."""
    out: asyncio.Queue[dpb.AgentMessage] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    helpers = [
        asyncio.create_task(s._send_reports(out)),
        asyncio.create_task(s._heartbeat(out, PERIOD_S)),
    ]
    sent: list[tuple[float, str]] = []

    async def collect() -> None:
        while True:
            msg = await out.get()
            sent.append((loop.time() - start, str(msg.WhichOneof("msg"))))

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


@pytest.mark.asyncio
async def test_idle_agent_heartbeats_every_period() -> None:
    sent = await timeline(make_session(), 2.0, 0)
    beats = [t for t, kind in sent if kind == "heartbeat"]
    assert 7 <= len(beats) <= 10
    assert all(b - a < PERIOD_S + SLACK_S for a, b in itertools.pairwise(beats))


@pytest.mark.asyncio
async def test_reports_stand_in_for_heartbeats_but_never_leave_a_gap() -> None:
    sent = await timeline(make_session(), 3.0, PERIOD_S / 2)
    beats = [t for t, kind in sent if kind == "heartbeat"]
    reports = [t for t, kind in sent if kind == "statuses"]
    assert len(reports) >= 20
    # One heartbeat in HEARTBEAT_EVERY periods instead of one each (~15 in 3 s).
    assert 2 <= len(beats) <= 3.0 / PERIOD_S / agent_session.HEARTBEAT_EVERY + 2
    # The manager never waits more than a period (and scheduling slack) for a message.
    times = sorted(t for t, _ in sent)
    assert all(b - a < PERIOD_S + SLACK_S for a, b in itertools.pairwise(times))
