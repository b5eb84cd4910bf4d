"""Several managers on one etcd: joining with the manager token, manager status in
`node ls`, leader failover under load, and node liveness when a manager dies.

Agents run the simulated runtime: these tests are about the control plane."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.procs import ManagerProcess, WorkerProcess, wait_for
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.pki.identity import NodeIdentity
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .helpers import wait_idle
from .test_agents_simulated import (
    control,
    start_workers,
    tokens,
    wait_nodes_ready,
    wait_service,
)

pytestmark = pytest.mark.integration


def nodes_json(m: ManagerProcess) -> dict[str, dict[str, Any]]:
    r = m.ctl("node", "ls", "--format", "json")
    assert r.code == 0, r.err
    return {n["hostname"]: n for n in json.loads(r.out)}


def two_managers(
    tmp_path: Path, etcd: EmbeddedEtcd, managers: list[ManagerProcess]
) -> tuple[ManagerProcess, ManagerProcess]:
    etcd_args = etcd.manager_args()
    m1 = ManagerProcess(tmp_path / "m1", *etcd_args, "--hostname", "mgr1")
    managers.append(m1.start())
    m2 = ManagerProcess(
        tmp_path / "m2",
        *etcd_args,
        "--hostname",
        "mgr2",
        "--join-addr",
        m1.addr,
        "--join-token",
        tokens(m1).manager,
    )
    managers.append(m2.start())
    return m1, m2


def running_slots(m: ManagerProcess, service: str) -> list[int]:
    tasks = control(m).ListTasks(api.ListTasksRequest(service_ref=service)).tasks
    return sorted(int(t.slot) for t in tasks if t.status.state == pb.RUNNING)


def test_manager_joins_and_node_ls_shows_manager_status(
    tmp_path: Path, etcd: EmbeddedEtcd, managers: list[ManagerProcess]
) -> None:
    m1, m2 = two_managers(tmp_path, etcd, managers)
    # The joining manager got a manager certificate from the cluster CA through m1.
    ident = NodeIdentity.load(m2.state_dir)
    assert ident is not None and ident.role == pb.ROLE_MANAGER and ident.node_id == m2.node_id

    def both_listed() -> bool:
        nodes = nodes_json(m1)
        return all(nodes.get(h, {}).get("status") == "ready" for h in ("mgr1", "mgr2"))

    wait_for(both_listed, 10, "both managers ready in node ls")
    nodes = nodes_json(m2)
    statuses = sorted(
        "leader" if n["manager_status"]["leader"] else "reachable" for n in nodes.values()
    )
    assert statuses == ["leader", "reachable"]
    assert all(n["role"] == "manager" and n["availability"] == "drain" for n in nodes.values())
    table = m1.ctl("node", "ls").out
    assert "MANAGER STATUS" in table and "leader" in table and "reachable" in table

    # A running manager cannot be removed; a stopped one shows unreachable, then can be.
    assert m1.ctl("node", "rm", "mgr2").code == 1
    assert m2.stop() == 0
    wait_for(
        lambda: nodes_json(m1)["mgr2"]["manager_status"]["reachable"] is False,
        10,
        "mgr2 unreachable",
    )
    down = nodes_json(m1)["mgr2"]
    assert down["status"] == "down" and "unreachable" in m1.ctl("node", "ls").out
    assert m1.ctl("node", "rm", "mgr2").code == 0


def test_kill_leader_during_scale_converges_to_exactly_12(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    m1, m2 = two_managers(tmp_path, etcd, managers)
    leader_host = wait_leader(m1)
    leader, follower = (m1, m2) if leader_host == "mgr1" else (m2, m1)
    # Agents join through the leader, so killing it also cuts their sessions.
    start_workers(tmp_path, leader, workers, "w1", "w2")
    wait_nodes_ready(leader, 2)
    assert (
        leader.ctl(
            "service", "create", "--name", "web", "--image", "busybox:1", "--replicas", "3"
        ).code
        == 0
    )
    assert follower.ctl("service", "scale", "web=12", "--detach").code == 0
    killed_at = time.monotonic()
    leader.kill()
    follower_host = "mgr2" if leader is m1 else "mgr1"
    took = wait_for(lambda: wait_leader(follower, 0.1) == follower_host, 15, "a new leader")
    print(f"leader change after kill -9: {took:.2f}s")
    wait_service(follower, "web", 12, timeout=60)
    print(f"12/12 running {time.monotonic() - killed_at:.2f}s after the kill")
    # Settled: exactly one running task per slot, the agents moved to the live manager.
    wait_idle(control(follower))
    assert running_slots(follower, "web") == list(range(1, 13))
    nodes = nodes_json(follower)
    assert nodes["w1"]["status"] == "ready" and nodes["w2"]["status"] == "ready"
    assert nodes[leader_host]["manager_status"]["reachable"] is False


def wait_leader(m: ManagerProcess, timeout: float = 10) -> str:
    """The hostname of the leading manager, as `node ls` through m shows it."""
    found: list[str] = []

    def check() -> bool:
        found[:] = [
            h for h, n in nodes_json(m).items() if n.get("manager_status", {}).get("leader")
        ]
        return bool(found)

    try:
        wait_for(check, timeout, "a leader")
    except AssertionError:
        return ""
    return found[0]


def test_nodes_of_a_dead_manager_that_never_come_back_go_down(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    """A manager and its agent die together: no dispatcher sees the session end, the
    session key goes with the manager's lease, and the leader marks the node down."""
    m1, m2 = two_managers(tmp_path, etcd, managers)
    wait_leader(m1)
    # Make m2 the leader: m1 is the one to die with its agent.
    if wait_leader(m1) == "mgr1":
        m1.stop()
        managers.remove(m1)
        wait_for(lambda: wait_leader(m2, 0.1) == "mgr2", 10, "mgr2 leads")
        m1 = ManagerProcess(m1.state_dir, *m1.extra)
        managers.append(m1.start())
    # The agents of a dead manager get the heartbeat window to reconnect elsewhere.
    assert m2.ctl("cluster", "update", "--heartbeat-period", "1s").code == 0
    (w1,) = start_workers(tmp_path, m1, workers, "w1")
    (w2,) = start_workers(tmp_path, m2, workers, "w2")
    wait_nodes_ready(m2, 2)
    assert (
        m2.ctl("service", "create", "--name", "web", "--image", "busybox:1", "--replicas", "4").code
        == 0
    )
    w1.kill()
    m1.kill()
    killed_at = time.monotonic()
    wait_for(lambda: nodes_json(m2)["w1"]["status"] == "down", 20, "w1 marked down")
    print(f"node of a dead manager marked down after {time.monotonic() - killed_at:.2f}s")
    wait_service(m2, "web", 4, timeout=30)
    tasks = control(m2).ListTasks(api.ListTasksRequest(service_ref="web")).tasks
    live = [t for t in tasks if t.desired_state == pb.RUNNING]
    assert {t.node_id for t in live} == {w2.node_id}


def test_node_that_never_reconnects_after_a_manager_restart_goes_down(
    tmp_path: Path, managers: list[ManagerProcess], workers: list[WorkerProcess]
) -> None:
    """The manager restarts while an agent is dead: nobody saw that session end, so the
    new leader gives each ready node the heartbeat window to register again."""
    m = ManagerProcess(tmp_path / "m1")
    managers.append(m.start())
    assert (
        m.ctl("cluster", "update", "--heartbeat-period", "1s", "--heartbeat-misses", "3").code == 0
    )
    w1, _ = start_workers(tmp_path, m, workers, "w1", "w2")
    wait_nodes_ready(m, 2)
    m.kill()
    w1.kill()
    m.start()
    started = time.monotonic()
    took = wait_for(lambda: nodes_json(m)["w1"]["status"] == "down", 20, "w1 marked down")
    print(f"node gone during a manager restart marked down {took:.2f}s after the restart")
    # The live agent registered again and stayed ready all along.
    assert nodes_json(m)["w2"]["status"] == "ready"
    assert time.monotonic() - started >= 2.5  # it got its heartbeat window (3 x 1 s)


def test_a_silent_session_does_not_down_a_node_whose_agent_went_to_another_manager(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    """The agent's connection to m2 goes silent (the process stopped, as behind a cut
    link) and the node's agent registers with m1 meanwhile: when m2's silent session
    times out, the node stays ready (found by the chaos test: it was marked down and
    stayed down while its agent heartbeated to m1)."""
    m1, m2 = two_managers(tmp_path, etcd, managers)
    assert m1.ctl("cluster", "update", "--heartbeat-period", "1s").code == 0
    (old,) = start_workers(tmp_path, m2, workers, "w1")
    wait_nodes_ready(m1, 1)
    old.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        # The same node (a copy of its state: the stopped agent holds the dir's lock).
        shutil.copytree(old.state_dir, tmp_path / "w1-again")
        new = WorkerProcess(tmp_path / "w1-again", m1.addr, "", *old.extra)
        workers.append(new.start(control_socket=m1.socket))
        # m2's session times out after the heartbeat window (3 x 1 s); watch past it.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert nodes_json(m1)["w1"]["status"] == "ready", "node marked down"
            time.sleep(0.2)
    finally:
        old.proc.kill()  # type: ignore[union-attr]
        old.proc.wait()  # type: ignore[union-attr]
