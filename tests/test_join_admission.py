"""Joins queue instead of failing: many at once from one address all succeed, a source
presenting bad tokens waits longer each time, and an agent whose manager is away keeps
trying instead of exiting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from shoal.lab.procs import ManagerProcess, WorkerProcess, free_manager_addr
from shoal.manager.admission import PENALTY_BASE_S, JoinAdmission, source_of
from shoal.pki import join as ident_mod


def test_source_of_peer_strings() -> None:
    assert source_of("ipv4:10.0.0.5:41234") == "10.0.0.5"
    assert source_of("ipv6:[::1]:5000") == "::1"
    assert source_of("unix:/run/x.sock") == "unix:/run/x.sock"


async def test_penalty_doubles_per_failure_and_only_for_that_source() -> None:
    adm = JoinAdmission(concurrency=2)
    assert adm.penalty_s("10.0.0.1") == 0
    for _ in range(3):
        adm.failed("10.0.0.1")
    assert adm.penalty_s("10.0.0.1") == pytest.approx(PENALTY_BASE_S * 4)
    assert adm.penalty_s("10.0.0.2") == 0


async def test_admission_bounds_concurrency() -> None:
    adm = JoinAdmission(concurrency=3)
    inside = peak = 0

    async def one() -> None:
        nonlocal inside, peak
        async with adm.admit("10.0.0.9"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(one() for _ in range(30)))
    assert peak == 3


def worker_token(m: ManagerProcess) -> str:
    got = m.ctl("cluster", "join-token", "worker", "-q")
    assert got.code == 0, got.err
    return got.out.strip()


@pytest.mark.integration
async def test_many_joins_at_once_all_succeed_and_bad_tokens_back_off(
    tmp_path: Path, managers: list[ManagerProcess]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    token = worker_token(m)
    joined = await asyncio.gather(*(ident_mod.join(m.addr, token, f"host{i}") for i in range(120)))
    assert len({j.node_id for j in joined}) == 120
    bad = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    took = []
    for _ in range(4):
        t0 = time.monotonic()
        with pytest.raises(ident_mod.JoinError) as err:
            await ident_mod.join(m.addr, bad, "intruder")
        assert not err.value.transient
        took.append(time.monotonic() - t0)
    # The fourth refusal waited at least the penalty of three failures before it.
    assert took[3] >= PENALTY_BASE_S * 4, took


@pytest.mark.integration
def test_agent_waits_for_an_absent_manager_to_join(
    tmp_path: Path, managers: list[ManagerProcess], workers: list[WorkerProcess]
) -> None:
    addr = free_manager_addr()
    m = ManagerProcess(tmp_path / "m1", "--listen-addr", addr).start()
    managers.append(m)
    token = worker_token(m)
    m.stop()
    w = WorkerProcess(tmp_path / "w1", addr, token, "--runtime", "simulated")
    workers.append(w.start(wait_joined=False))
    # The manager is away: the agent retries (twice seen in its log) and stays up.
    deadline = time.monotonic() + 30
    while w.log_text().count("trying again") < 2:
        assert w.proc is not None and w.proc.poll() is None, w.log_text()[-2000:]
        assert time.monotonic() < deadline, "the agent did not retry its join"
        time.sleep(0.1)
    m.start()
    deadline = time.monotonic() + 60
    while not (w.state_dir / "node_id").exists():
        assert w.proc.poll() is None, w.log_text()[-2000:]
        assert time.monotonic() < deadline, "the agent did not join once the manager was back"
        time.sleep(0.1)


@pytest.mark.integration
def test_join_token_from_the_environment_stays_out_of_argv(
    tmp_path: Path,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    token = worker_token(m)
    monkeypatch.setenv("SWARM_JOIN_TOKEN", token)
    w = WorkerProcess(tmp_path / "w1", m.addr, "", "--runtime", "simulated").start()
    workers.append(w)
    assert w.proc is not None
    assert token.encode() not in Path(f"/proc/{w.proc.pid}/cmdline").read_bytes()
    got = m.ctl("node", "ls", "--format", "json")
    assert w.node_id in {n["id"] for n in got.json()}
