"""Self-healing with real containers in the netns multi-host cluster.

h0 runs etcd, the manager (`--etcd-endpoints` to that etcd, so a test can stop and
start it) and a registry with the busybox test image; h1 and h2 run worker agents
whose busybox containers run in the session's containerd. One cluster serves the
module; every test starts from a healed cluster without services.

Times are measured from the test's side and printed (see them with `pytest -s`).
The tests act through `swarmctl` as a user would; where a time is measured or the
service is sampled continuously they read the control API over gRPC instead (a
`swarmctl` run takes a good part of a second to start, too coarse for that).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import grpc
import pytest

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .conftest import Bounds
from .helpers import wait_idle
from .selfheal_bed import WORKERS, Bed, tb, testbed, wait_for
from .timeline import Timeline, now_ms

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root")]
__all__ = ["tb", "testbed"]  # the fixtures


# ---------------------------------------------------------------- 1. a worker is lost


def test_worker_lost_its_replicas_move_and_its_stale_containers_stop(
    tb: Bed, bounds: Bounds
) -> None:
    tb.create("web", "--replicas", "6")
    assert tb.running_on("web") == {"h1": 3, "h2": 3}
    h1 = tb.c.hosts[1]
    old = {t.id for t in tb.tasks("web") if tb.host_of(t) == "h1" and t.desired_state == pb.RUNNING}
    old_pids = tb.running_containers("h1")
    assert set(old_pids) == old

    # h1 vanishes: its underlay link goes down first, so not even a FIN of its dying
    # agent reaches the manager (a host that lost power); then its agent is SIGKILLed.
    lost = time.monotonic()
    h1.run("ip", "link", "set", "eth0", "down")
    tb.agents["h1"].kill()
    tb.agents["h1"].wait()
    wait_for(lambda: tb.running_on("web") == {"h2": 6}, 60, "6 running on h2")
    bounds.check(time.monotonic() - lost, 15, "worker lost -> 6/6 running on h2 (goal: 5 s)")
    wait_idle(tb.api)  # the leader acted on everything: nothing more may change
    tasks = tb.tasks("web")
    assert len(tasks) == 6 + len(old), "more than one replacement per lost task:\n" + "\n".join(
        tb.describe(t) for t in sorted(tasks, key=lambda t: (t.slot, t.meta.created_at_ms))
    )
    live = [t for t in tasks if t.desired_state == pb.RUNNING]
    assert sorted(t.slot for t in live) == [1, 2, 3, 4, 5, 6]
    assert all(t.status.state == pb.RUNNING and tb.host_of(t) == "h2" for t in live)
    # No slot has two running tasks on the nodes the cluster can reach. (The manager
    # cannot hear from h1: its old tasks keep their last report, desired shutdown.)
    reachable = Counter(
        t.slot for t in tasks if t.status.state == pb.RUNNING and tb.host_of(t) != "h1"
    )
    assert max(reachable.values()) == 1
    assert all(t.desired_state == pb.SHUTDOWN for t in tasks if t.id in old)
    nodes = {n["hostname"]: n for n in tb.ctl("node", "ls", "--format", "json")}
    assert nodes["h1"]["status"] == "down" and nodes["h2"]["status"] == "ready"
    # The cut-off host's containers ran on meanwhile: it lost its network, not its life.
    assert tb.running_containers("h1") == old_pids

    # h1 comes back with the same state dir: its agent learns that its tasks were
    # replaced and stops their containers.
    h1.run("ip", "link", "set", "eth0", "up")
    back = time.monotonic()
    tb.start_agent(h1)
    ready = time.monotonic() - back

    def stale_stopped() -> bool:
        ps = tb.ctl("service", "ps", "web", "--format", "json")
        return not tb.running_containers("h1") and all(
            t["state"] == "shutdown" for t in ps if t["id"] in old
        )

    wait_for(stale_stopped, 60, "the stale containers on h1 stopped", 0.2)
    print(
        f"h1 back: node ready {ready:.2f}s after its agent started, stale containers "
        f"stopped and their tasks shut down after {time.monotonic() - back:.2f}s"
    )
    nodes = {n["hostname"]: n for n in tb.ctl("node", "ls", "--format", "json")}
    assert nodes["h1"]["status"] == "ready"
    # Now literally: no slot has two running tasks, and the service did not move back.
    ps = tb.ctl("service", "ps", "web", "--format", "json")
    running = Counter(t["slot"] for t in ps if t["state"] == "running")
    assert sorted(running) == [1, 2, 3, 4, 5, 6] and set(running.values()) == {1}
    assert tb.running_on("web") == {"h2": 6}
    left = tb.containers("h1")
    assert all(left[cid][0] != "running" for cid in old if cid in left)
    print(f"old containers on h1: {len(old) - len(left.keys() & old)} removed, rest stopped")


# ---------------------------------------------------------------- 2. a container is killed


def test_container_killed_from_outside_is_replaced(tb: Bed, bounds: Bounds) -> None:
    tb.create("victim", "--replicas", "2", "--restart-condition", "any", "--restart-delay", "0s")
    (victim, other) = sorted(
        (t for t in tb.tasks("victim") if t.desired_state == pb.RUNNING), key=lambda t: t.slot
    )
    pid = int(victim.status.container.pid)  # the task's status names the container's process
    host = tb.host_of(victim)
    assert tb.running_containers(host)[victim.id] == pid  # and containerd agrees
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        slot = [
            t for t in tb.tasks("victim") if t.slot == victim.slot and t.desired_state == pb.RUNNING
        ]
        return len(slot) == 1 and slot[0].id != victim.id and slot[0].status.state == pb.RUNNING

    wait_for(replaced, 60, "the replacement running")
    # Docker Swarm on this machine class: 5.4 s (ANCHORS.md)
    bounds.check(time.monotonic() - killed, 5.4, "container SIGKILLed -> replacement running")
    wait_idle(tb.api)

    ps = {t["id"]: t for t in tb.ctl("service", "ps", "victim", "--format", "json")}
    assert ps[victim.id]["state"] == "failed" and ps[victim.id]["exit_code"] == 137
    assert ps[victim.id]["desired_state"] == "shutdown"
    assert ps[other.id]["state"] == "running", "the other task was touched"
    assert len(ps) == 3
    new = next(t for t in ps.values() if t["slot"] == victim.slot and t["id"] != victim.id)
    assert tb.running_containers(new["node_hostname"])[new["id"]] > 0
    print(tb.ctl("service", "ps", "victim"))


# ---------------------------------------------------------------- drain and rebalance


def test_drain_moves_tasks_and_rebalance_spreads_them_back(tb: Bed) -> None:
    tb.create("web", "--replicas", "4", "--rebalance", "--update-parallelism", "1")
    assert tb.running_on("web") == {"h1": 2, "h2": 2}
    started = time.monotonic()
    tb.ctl("node", "update", "h1", "--availability", "drain")
    wait_for(lambda: tb.running_on("web") == {"h2": 4}, 60, "all on h2")
    print(f"\ndrain: all 4 tasks on h2 {time.monotonic() - started:.2f}s after `node update`")
    wait_for(lambda: not tb.running_containers("h1"), 30, "no container running on h1", 0.2)
    started = time.monotonic()
    tb.ctl("node", "update", "h1", "--availability", "active")
    wait_for(lambda: tb.running_on("web") == {"h1": 2, "h2": 2}, 60, "2 + 2 again")
    print(f"active again: rebalanced to 2 + 2 in {time.monotonic() - started:.2f}s")
    # A service without --rebalance stays where it is.
    tb.create("db", "--replicas", "2")
    tb.ctl("node", "update", "h2", "--availability", "drain")
    wait_for(lambda: tb.running_on("db") == {"h1": 2}, 60, "db on h1")
    tb.ctl("node", "update", "h2", "--availability", "active")
    wait_for(lambda: tb.running_on("web") == {"h1": 2, "h2": 2}, 60, "web rebalanced")
    assert tb.running_on("db") == {"h1": 2}


# ---------------------------------------------------------------- 3. rolling update


class Watcher(threading.Thread):
    """Feeds the service's task records to a Timeline on every change (WatchService):
    the counts come from the records' timestamps, not from when they were looked at."""

    def __init__(self, tb: Bed, service: str) -> None:
        super().__init__(daemon=True)
        self.tb = tb
        self.service = service
        self.stream = tb.api.WatchService(api.WatchServiceRequest(ref=service), timeout=600)
        self.timeline = Timeline()
        self.timeline.observe(tb.tasks(service))
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in self.stream:
                self.timeline.observe(self.tb.tasks(self.service))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        except BaseException as err:
            self.error = err

    def stop(self) -> Timeline:
        self.stream.cancel()
        self.join(timeout=30)
        assert self.error is None, f"watching failed: {self.error}"
        # The final records: every stopped task's own time of stopping.
        self.timeline.observe(self.tb.tasks(self.service))
        return self.timeline


def test_rolling_update_keeps_four_of_six_healthy_and_rolls_back_a_broken_image(
    tb: Bed,
) -> None:
    # Healthy once the command has made /tmp/ok.
    tb.create(
        "web", "--replicas", "6", "--update-parallelism", "2",
        "--update-failure-action", "rollback",
        "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "2",
        command=["sh", "-c", "touch /tmp/ok; trap 'exit 0' TERM; sleep 3600 & wait"],
    )  # fmt: skip
    assert tb.healthy("web") == 6  # create waited for health, not only for running

    watcher = Watcher(tb, "web")
    watcher.start()
    try:
        started = now_ms()
        tb.ctl("service", "update", "web", "--env", "V=2", "--timeout", "150s")
        updated = now_ms()
        assert tb.healthy("web") == 6
        live = [t for t in tb.tasks("web") if t.desired_state == pb.RUNNING]
        assert len(live) == 6 and all("V=2" in t.spec.container.env for t in live)
        before = {t.slot: t.id for t in live}
        print(f"\nrolling update (env), 6 replicas, parallelism 2: {updated - started} ms")

        broken = f"{tb.registry.addr}/busybox:missing"
        r = tb.try_ctl("service", "update", "web", "--image", broken, "--timeout", "150s")
        assert r.code == 1 and "update rolled back" in r.err and "manifest unknown" in r.err, r.err
        print(f"update to {broken}: exit 1 after {(now_ms() - updated) / 1000:.2f}s: {r.err}")
        wait_for(lambda: tb.healthy("web") == 6, 120, "6 healthy after the rollback")
        rolled_back = now_ms()
    finally:
        timeline = watcher.stop()
    during_update = timeline.fewest(started, updated)
    during_rollback = timeline.fewest(updated, rolled_back)
    print(f"fewest healthy: {during_update} in the update, {during_rollback} in the rollback")
    assert during_update >= 4, f"only {during_update} healthy at some moment of the update"
    assert during_rollback >= 4, f"only {during_rollback} healthy at some moment of the rollback"
    check_rolled_back(tb, broken, before)


def check_rolled_back(tb: Bed, broken: str, before: dict[int, str]) -> None:
    """The service is back on its image, with health; the broken update touched at most
    one batch (parallelism 2), and the rollback replaced only the slots it touched."""
    info = tb.api.GetService(api.GetServiceRequest(ref="web")).service
    assert info.service.update_status.state == pb.UpdateStatus.ROLLBACK_COMPLETED
    assert info.running_updated == 6
    svc = tb.ctl("service", "inspect", "web", "--format", "json")
    assert svc["image"] == tb.image and svc["running"] == 6
    ps = tb.ctl("service", "ps", "web", "--format", "json")
    live_ps = [t for t in ps if t["desired_state"] == "running"]
    assert len(live_ps) == 6
    assert all(t["image"] == tb.image and t["health"] == "healthy" for t in live_ps)
    assert any(t["image"] == broken and t["state"] == "rejected" for t in ps)
    tasks = tb.tasks("web")
    broken_slots = {t.slot for t in tasks if t.spec.container.image == broken}
    assert 1 <= len(broken_slots) <= 2, broken_slots
    live = {t.slot: t for t in tasks if t.desired_state == pb.RUNNING}
    assert all("V=2" in t.spec.container.env for t in live.values())
    kept = {slot for slot, t in live.items() if t.id == before[slot]}
    assert kept == set(before) - broken_slots, "the rollback replaced tasks it did not break"


# ---------------------------------------------------------------- 4. etcd away for 20 s


def test_etcd_stopped_for_20s_containers_keep_running_and_the_cluster_converges(
    tb: Bed,
) -> None:
    # The manager's etcd is stopped (SIGTERM) for 20 s and started again with its data.
    tb.create("steady", "--replicas", "4")
    assert tb.running_on("steady") == {"h1": 2, "h2": 2}
    before = {t.id for t in tb.tasks("steady")}
    pids = {h: tb.running_containers(h) for h in WORKERS}
    assert set().union(*pids.values()) == before

    tb.etcd.stop()
    stopped = time.monotonic()
    try:
        r = tb.try_ctl("service", "ls", timeout=120)
        print(
            f"\netcd stopped; `swarmctl service ls` meanwhile: exit {r.code} after "
            f"{time.monotonic() - stopped:.1f}s: {r.err.strip()}"
        )
        assert r.code == 1
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
        assert {h: tb.running_containers(h) for h in WORKERS} == pids, "containers stopped"
        assert all(a.poll() is None for a in tb.agents.values()), "an agent died"
    finally:
        tb.etcd.start()
    restarted = time.monotonic()
    print(f"etcd started again after {restarted - stopped:.1f}s")

    def served() -> bool:
        try:
            tb.api.ListServices(api.ListServicesRequest(), timeout=5)
            return True
        except grpc.RpcError:
            return False

    took = wait_for(served, 60, "the control API answering again", 0.2)
    print(f"control API answers {took:.2f}s after etcd is back")
    wait_for(lambda: tb.running_on("steady") == {"h1": 2, "h2": 2}, 60, "4 running")
    nodes = {n["hostname"]: n["status"] for n in tb.ctl("node", "ls", "--format", "json")}
    assert nodes["h1"] == nodes["h2"] == "ready"
    # Nothing was replaced and no container restarted.
    assert {t.id for t in tb.tasks("steady")} == before, "tasks were replaced"
    assert {h: tb.running_containers(h) for h in WORKERS} == pids

    # And new work gets done.
    started = time.monotonic()
    tb.ctl("service", "scale", "steady=6")
    print(f"scale to 6 after the outage: converged in {time.monotonic() - started:.2f}s")
    assert sum(tb.running_on("steady").values()) == 6
    assert tb.manager.poll() is None, "the manager died during the outage"


# ---------------------------------------------------------------- 5. pending: why


def test_pending_task_shows_the_reason_in_service_ps(tb: Bed) -> None:
    tb.create("nowhere", "--constraint", "node.labels.zone==nowhere", "-d")
    # The scheduler's words; both workers are ready, the manager runs no tasks.
    reason = "no suitable node: 2 nodes not satisfying node.labels.zone==nowhere"

    def shown() -> bool:
        ps = tb.ctl("service", "ps", "nowhere", "--format", "json")
        return len(ps) == 1 and ps[0]["error"] == reason

    wait_for(shown, 60, "the reason in service ps", 0.2)
    table = tb.ctl("service", "ps", "nowhere")
    print("\n" + table)
    header, row = table.splitlines()[:2]
    assert header.rstrip().endswith("ERROR")
    assert "nowhere.1" in row and " running " in row and " pending " in row
    assert row.rstrip().endswith(reason)
