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

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.etcd import HostEtcd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.procs import Result, swarmctl, terminate, wait_for
from shoal.lab.registry import Registry
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("h1", "h2")
# PID 1 of the container: exits on SIGTERM (a plain `sleep` as PID 1 would ignore it).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


class Bed:
    """The module's cluster and what the tests need to reach into it."""

    def __init__(
        self, cluster: Cluster, etcd: HostEtcd, containerd: Containerd, registry: Registry
    ) -> None:
        self.c = cluster
        self.etcd = etcd
        self.containerd = containerd
        self.registry = registry
        self.image = ""
        self.nodes: dict[str, str] = {}  # hostname -> node id
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.manager = cluster.manager_host.procs[-1]
        self.api: api_grpc.ControlStub = cluster.control()

    # ---------------------------------------------------------------- the CLI

    def ctl(self, *args: str, timeout: float = 150) -> Any:
        r = swarmctl(self.c.socket, *args, timeout=timeout)
        assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
        return json.loads(r.out) if "--format" in args else r.out

    def try_ctl(self, *args: str, timeout: float = 150) -> Result:
        return swarmctl(self.c.socket, *args, timeout=timeout)

    def create(self, name: str, *flags: str, command: list[str] = SLEEPER) -> None:
        self.ctl(
            "service", "create", "--name", name, "--image", self.image,
            "--stop-grace-period", "2s", *flags, *command,
        )  # fmt: skip

    # ---------------------------------------------------------------- the control API

    def tasks(self, service: str) -> list[pb.Task]:
        return list(self.api.ListTasks(api.ListTasksRequest(service_ref=service), timeout=20).tasks)

    def host_of(self, t: pb.Task) -> str:
        return next((h for h, n in self.nodes.items() if n == t.node_id), t.node_id)

    def running_on(self, service: str) -> Counter[str]:
        """Tasks desired and observed running, per hostname."""
        return Counter(
            self.host_of(t)
            for t in self.tasks(service)
            if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING
        )

    def healthy(self, service: str) -> int:
        return sum(
            1
            for t in self.tasks(service)
            if t.desired_state == pb.RUNNING
            and t.status.state == pb.RUNNING
            and t.status.health == pb.HEALTH_HEALTHY
        )

    def describe(self, t: pb.Task) -> str:
        """One line per task, for assertion messages."""
        return (
            f"slot {t.slot} {t.id[:12]} on {self.host_of(t) or '-'}: "
            f"desired {pb.TaskState.Name(t.desired_state)}, "
            f"{pb.TaskState.Name(t.status.state)} ({t.status.message}; {t.status.err}) "
            f"created {t.meta.created_at_ms % 100_000}ms"
        )

    # ---------------------------------------------------------------- containerd

    def containers(self, hostname: str) -> dict[str, tuple[str, int]]:
        """The node's containers in its own containerd namespace: id -> (status, pid)."""

        return self.containerd.containers(self.nodes[hostname])

    def running_containers(self, hostname: str) -> dict[str, int]:
        """Running containers: id -> pid of their first process."""
        return {c: pid for c, (st, pid) in self.containers(hostname).items() if st == "running"}

    # ---------------------------------------------------------------- agents

    def start_agent(self, host: Host) -> None:
        self.nodes[host.name] = self.c.start_worker(
            host,
            "--containerd-socket", str(self.containerd.socket),
            "--insecure-registry", self.registry.addr,
        )  # fmt: skip
        self.agents[host.name] = host.procs[-1]

    def heal(self) -> None:
        """Undoes what a failed test may have left: etcd or an agent down, a link down, a
        drained node."""
        if not self.etcd.running():
            self.etcd.start()
        for host in self.c.hosts.hosts[1:]:
            host.run("ip", "link", "set", "eth0", "up")
            if self.agents[host.name].poll() is not None:
                self.start_agent(host)
        wait_for(
            lambda: all(self.c.node_ready(self.nodes[h]) for h in WORKERS), 60, "workers ready"
        )
        for node in self.ctl("node", "ls", "--format", "json"):
            if node["role"] == "worker" and node["availability"] != "active":
                self.ctl("node", "update", node["hostname"], "--availability", "active")

    def clear(self) -> None:
        """Removes every service; then no container of ours may remain in containerd."""
        for svc in self.ctl("service", "ls", "-q").split():
            self.ctl("service", "rm", svc)
        wait_for(
            lambda: not any(self.containers(h) for h in WORKERS), 60, "containers removed", 0.2
        )


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory, containerd: Containerd) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("selfheal")
    # Hosts: namespaces named with a per-run prefix, all deleted on the way out; they
    # kill what runs in them (etcd, manager, agents) first.
    with Hosts(3) as hosts:
        h0 = hosts[0]
        etcd = HostEtcd(h0, root / "etcd").start()
        registry = Registry(host=h0.addr, port=5000, wrap=h0.cmd()).start()
        try:
            c = Cluster(hosts, root)
            c.start_manager("--etcd-endpoints", etcd.endpoint)
            tb = Bed(c, etcd, containerd, registry)
            push = h0.run(
                sys.executable, "-m", "shoal.lab.images", registry.addr, cwd=str(REPO)
            )
            tb.image = push.stdout.split()[0]
            for h in hosts.hosts[1:]:
                tb.start_agent(h)
            try:
                yield tb
            finally:
                try:
                    tb.heal()
                    tb.clear()
                except Exception as err:  # the session's containerd goes anyway
                    print(f"clean-up of the cluster failed: {err}")
                    for name in ("manager", *WORKERS):
                        print(f"--- {name}.log\n{c.log(name)}")
        finally:
            registry.stop()


@pytest.fixture
def tb(testbed: Bed) -> Iterator[Bed]:
    """The shared cluster, healed and without services, before and after each test."""
    testbed.heal()
    testbed.clear()
    yield testbed
    testbed.heal()
    testbed.clear()


# ---------------------------------------------------------------- 1. a worker is lost


def test_worker_lost_its_replicas_move_and_its_stale_containers_stop(tb: Bed) -> None:
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
    took = time.monotonic() - lost
    print(f"\nworker lost (agent SIGKILLed, link down) -> 6/6 running on h2 in {took:.2f}s")
    assert took < 15, f"replicas moved in {took:.2f}s (goal: < 5 s)"

    time.sleep(2)  # let it settle: nothing more may change
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


def test_container_killed_from_outside_is_replaced(tb: Bed) -> None:
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
    took = time.monotonic() - killed
    print(f"\ncontainer SIGKILLed -> replacement running in {took:.2f}s")
    assert took < 15

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


class Sampler(threading.Thread):
    """Counts the service's healthy running tasks on every change (WatchService)."""

    def __init__(self, tb: Bed, service: str) -> None:
        super().__init__(daemon=True)
        self.tb = tb
        self.service = service
        self.stream = tb.api.WatchService(api.WatchServiceRequest(ref=service), timeout=600)
        self.samples: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in self.stream:
                self.samples.append(self.tb.healthy(self.service))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        except BaseException as err:
            self.error = err

    def take(self) -> list[int]:
        """The samples so far, from now on fresh ones."""
        out, self.samples = self.samples, []
        return out

    def stop(self) -> None:
        self.stream.cancel()
        self.join(timeout=30)


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

    sampler = Sampler(tb, "web")
    sampler.start()
    try:
        started = time.monotonic()
        tb.ctl("service", "update", "web", "--env", "V=2", "--timeout", "150s")
        took = time.monotonic() - started
        during_update = sampler.take()
        assert tb.healthy("web") == 6
        live = [t for t in tb.tasks("web") if t.desired_state == pb.RUNNING]
        assert len(live) == 6 and all("V=2" in t.spec.container.env for t in live)
        print(
            f"\nrolling update (env), 6 replicas, parallelism 2: {took:.2f}s; "
            f"{len(during_update)} samples, fewest healthy {min(during_update)}"
        )

        broken = f"{tb.registry.addr}/busybox:missing"
        started = time.monotonic()
        r = tb.try_ctl("service", "update", "web", "--image", broken, "--timeout", "150s")
        assert r.code == 1 and "update rolled back" in r.err, r.err
        print(f"update to {broken}: exit 1 after {time.monotonic() - started:.2f}s: {r.err}")
        wait_for(lambda: tb.healthy("web") == 6, 120, "6 healthy after the rollback")
        took = time.monotonic() - started
        during_rollback = sampler.take()
    finally:
        sampler.stop()
    assert sampler.error is None, f"sampling failed: {sampler.error}"
    print(
        f"rolled back to 6/6 healthy {took:.2f}s after the update began; "
        f"{len(during_rollback)} samples, fewest healthy {min(during_rollback)}"
    )
    assert min(during_update) >= 4, f"only {min(during_update)} healthy during the update"
    assert min(during_rollback) >= 4, f"only {min(during_rollback)} healthy during the rollback"

    svc = tb.ctl("service", "inspect", "web", "--format", "json")
    assert svc["image"] == tb.image and svc["running"] == 6
    ps = tb.ctl("service", "ps", "web", "--format", "json")
    live_ps = [t for t in ps if t["desired_state"] == "running"]
    assert len(live_ps) == 6
    assert all(t["image"] == tb.image and t["health"] == "healthy" for t in live_ps)
    assert any(t["image"] == broken and t["state"] == "rejected" for t in ps)
    assert all(
        "V=2" in t.spec.container.env for t in tb.tasks("web") if t.desired_state == pb.RUNNING
    )


# ---------------------------------------------------------------- 4. etcd away for 20 s


def test_etcd_stopped_for_20s_containers_keep_running_and_the_cluster_converges(
    tb: Bed,
) -> None:
    # As tests/test_agents_simulated.py's etcd outage, with real containers: the
    # manager's etcd is stopped (SIGTERM) for 20 s and started again with its data.
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


# ---------------------------------------------------------------- 7. two managers


def test_leader_killed_during_a_scale_from_3_to_12_converges_to_exactly_12(tb: Bed) -> None:
    """A second manager joins (same etcd, manager token, certificate through the first);
    the agents hear of it in their sessions. The leader is SIGKILLed right after a
    scale from 3 to 12 was accepted: the other manager takes over, the agents move to
    it, and the service ends with exactly 12 running, one per slot."""
    h0 = tb.c.manager_host
    m1_proc = tb.manager if tb.manager.poll() is None else h0.procs[-1]
    m2_dir = tb.c.root / "manager2"
    token = tb.ctl("cluster", "join-token", "manager", "-q").strip()
    m2_proc = h0.spawn(
        [
            sys.executable, "-m", "shoal.daemon", "manager", "--state-dir", str(m2_dir),
            "--listen-addr", f"{h0.addr}:4252", "--advertise-addr", h0.addr,
            "--etcd-endpoints", tb.etcd.endpoint, "--hostname", "manager2",
            "--join-addr", tb.c.manager_addr, "--join-token", token,
        ],
        tb.c.root / "manager2.log",
    )  # fmt: skip
    m2_sock = m2_dir / "control.sock"

    def managers() -> dict[str, dict[str, Any]]:
        nodes = tb.ctl("node", "ls", "--format", "json")
        return {n["hostname"]: n for n in nodes if n["role"] == "manager"}

    killed: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: managers().get("manager2", {}).get("status") == "ready", 60, "m2 up")
        leader = next(h for h, n in managers().items() if n["manager_status"]["leader"])
        m1_name = next(h for h in managers() if h != "manager2")
        tb.create("web", "--replicas", "3")
        wait_for(lambda: sum(tb.running_on("web").values()) == 3, 60, "3 running")
        killed, survivor_sock = (m1_proc, m2_sock) if leader == m1_name else (m2_proc, tb.c.socket)
        r = swarmctl(survivor_sock, "service", "scale", "web=12", "-d")
        assert r.code == 0, r.err
        killed_at = time.monotonic()
        killed.kill()
        killed.wait()
        survivor = "manager2" if leader == m1_name else m1_name

        def survivor_leads() -> bool:
            r = swarmctl(survivor_sock, "node", "ls", "--format", "json")
            nodes = json.loads(r.out) if r.code == 0 else []
            return any(n["hostname"] == survivor and n["manager_status"]["leader"] for n in nodes)

        wait_for(survivor_leads, 30, "the surviving manager leads", 0.1)
        lead_s = time.monotonic() - killed_at
        survivor_api = api_grpc.ControlStub(grpc.insecure_channel(f"unix://{survivor_sock}"))

        def running() -> list[pb.Task]:
            tasks = survivor_api.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
            return [
                t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING
            ]

        wait_for(lambda: len(running()) == 12, 90, "12 running")
        print(
            f"\nleader killed during scale 3 -> 12: new leader after {lead_s:.2f}s, "
            f"12/12 running after {time.monotonic() - killed_at:.2f}s"
        )
        time.sleep(2)  # settled: exactly 12, one per slot, and the agents still ready
        assert sorted(t.slot for t in running()) == list(range(1, 13))
        r = swarmctl(survivor_sock, "node", "ls", "--format", "json")
        nodes = {n["hostname"]: n for n in json.loads(r.out)}
        assert all(nodes[h]["status"] == "ready" for h in WORKERS)
    finally:
        # Back to one manager (the module's, on its socket) for the tests after this one.
        if killed is m1_proc or tb.manager.poll() is not None:
            tb.c.start_manager("--etcd-endpoints", tb.etcd.endpoint)
            tb.manager = h0.procs[-1]
        terminate(m2_proc, timeout=30)
        wait_for(lambda: managers().get("manager2", {}).get("status") != "ready", 30, "m2 gone")
        tb.ctl("node", "rm", "manager2")
