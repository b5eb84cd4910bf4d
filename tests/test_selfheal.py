"""Self-healing with real containers in the netns multi-host cluster.

A manager (embedded etcd) and a registry on h0, agents on h1 and h2 running busybox
containers through containerd. Each test makes its own service and removes it; the
times measured are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.containerd import ContainerdRuntime
from tests.testbed.cluster import Cluster
from tests.testbed.containerd import Containerd
from tests.testbed.hosts import Host, Hosts
from tests.testbed.registry import Registry

from .procs import swarmctl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[1]
# PID 1 of the container: exits on SIGTERM (plain `sleep` would ignore it).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


class Netns:
    """The cluster with the handles these tests need."""

    def __init__(self, cluster: Cluster, containerd: Containerd, image: str) -> None:
        self.c = cluster
        self.containerd = containerd
        self.image = image
        self.nodes: dict[str, str] = {}  # hostname -> node id
        self.registry_addr = ""

    def ctl(self, *args: str, timeout: float = 120) -> Any:
        r = swarmctl(self.c.socket, *args, timeout=timeout)
        assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
        return json.loads(r.out) if "--format" in args else r.out

    def create(self, name: str, *flags: str, command: list[str] = SLEEPER) -> None:
        self.ctl(
            "service", "create", "--name", name, "--image", self.image,
            "--stop-grace-period", "2s", *flags, *command,
        )  # fmt: skip

    def live(self, service: str) -> list[dict[str, Any]]:
        tasks = self.ctl("service", "ps", service, "--format", "json")
        return [t for t in tasks if t["desired_state"] == "running"]

    def running_on(self, service: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.live(service):
            if t["state"] == "running":
                out[t["node_hostname"]] = out.get(t["node_hostname"], 0) + 1
        return out

    def start_agent(self, host: Host) -> str:
        return self.c.start_worker(
            host,
            "--containerd-socket",
            str(self.containerd.socket),
            "--insecure-registry",
            self.registry_addr,
        )

    def containers(self, hostname: str, running: bool = False) -> list[str]:
        """Container ids in the node's own containerd namespace (only running ones)."""

        async def listed() -> list[str]:
            rt = ContainerdRuntime(str(self.containerd.socket), f"shoal-{self.nodes[hostname]}")
            try:
                ids = await rt.list()
                if not running:
                    return ids
                states = [await rt.state(cid) for cid in ids]
                return [s.container_id for s in states if s is not None and s.status == "running"]
            finally:
                await rt.close()

        return asyncio.run(listed())


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until check() held. Polls the CLI's view: the tests act as a user would."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory, containerd: Containerd) -> Iterator[Netns]:
    root = tmp_path_factory.mktemp("selfheal")
    with Hosts(3) as hosts:
        h0 = hosts[0]
        registry = Registry(host=h0.addr, port=5000, wrap=h0.cmd()).start()
        try:
            image = h0.run(
                sys.executable, "-m", "tests.testbed.images", registry.addr, "busybox",
                cwd=str(REPO),
            ).stdout.split()[0]  # fmt: skip
            c = Cluster(hosts, root)
            c.start_manager()
            n = Netns(c, containerd, image)
            n.registry_addr = registry.addr
            for h in (hosts[1], hosts[2]):
                n.nodes[h.name] = n.start_agent(h)
            yield n
            # Nothing of ours may stay in containerd.
            for svc in n.ctl("service", "ls", "-q").split():
                n.ctl("service", "rm", svc)
            wait_for(
                lambda: not n.containers("h1") and not n.containers("h2"), 60, "containers gone"
            )
        finally:
            registry.stop()


@pytest.fixture
def cleanup(netns: Netns) -> Iterator[None]:
    yield
    for svc in netns.ctl("service", "ls", "-q").split():
        netns.ctl("service", "rm", svc)


def test_worker_lost_replicas_move_and_stale_containers_stop(netns: Netns, cleanup: None) -> None:
    n = netns
    n.create("web", "--replicas", "4")
    wait_for(lambda: n.running_on("web") == {"h1": 2, "h2": 2}, 60, "2 + 2 running")
    h2 = n.c.hosts[2]
    stale = {t["id"] for t in n.live("web") if t["node_hostname"] == "h2"}
    assert set(n.containers("h2", running=True)) == stale

    # h2 vanishes: its link goes down, then its agent is killed.
    agent = next(p for p in reversed(h2.procs) if p.poll() is None)
    lost_at = time.monotonic()
    h2.run("ip", "link", "set", "eth0", "down")
    agent.kill()
    agent.wait()
    wait_for(lambda: n.running_on("web") == {"h1": 4}, 30, "4 running on h1")
    took = time.monotonic() - lost_at
    print(f"\nworker lost (agent killed, link down) -> 4/4 running on h1 in {took:.2f}s")
    assert took < 10  # goal < 5 s; generous for a loaded CI machine
    time.sleep(2)  # settled: one running task per slot
    slots = [t["slot"] for t in n.live("web") if t["state"] == "running"]
    assert sorted(slots) == [1, 2, 3, 4]
    nodes = {x["hostname"]: x for x in n.ctl("node", "ls", "--format", "json")}
    assert nodes["h2"]["status"] == "down"
    # Its containers ran on meanwhile (the host was cut off, not dead).
    assert set(n.containers("h2", running=True)) == stale

    # h2 comes back: the agent learns its tasks were replaced and stops them.
    h2.run("ip", "link", "set", "eth0", "up")
    back_at = time.monotonic()
    n.start_agent(h2)
    wait_for(lambda: not n.containers("h2", running=True), 30, "stale containers on h2 stopped")
    print(f"stale containers on the returning node stopped in {time.monotonic() - back_at:.2f}s")
    assert n.running_on("web") == {"h1": 4}


def test_container_killed_is_replaced(netns: Netns, cleanup: None) -> None:
    n = netns
    n.create("web", "--replicas", "2")
    wait_for(lambda: sum(n.running_on("web").values()) == 2, 60, "2 running")
    victim = n.live("web")[0]
    task = n.c.control().GetTask(api.GetTaskRequest(ref=victim["id"])).task
    pid = int(task.status.container.pid)
    assert pid > 0
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        slot = [t for t in n.live("web") if t["slot"] == victim["slot"]]
        return len(slot) == 1 and slot[0]["id"] != victim["id"] and slot[0]["state"] == "running"

    wait_for(replaced, 30, "replacement running")
    took = time.monotonic() - killed_at
    print(f"\ncontainer killed -> replacement running in {took:.2f}s (Swarm: 5.4 s)")
    assert took < 5
    old = n.c.control().GetTask(api.GetTaskRequest(ref=victim["id"])).task
    assert old.status.state == pb.FAILED and old.status.container.exit_code == 137


def test_drain_moves_tasks_and_rebalance_spreads_them_back(netns: Netns, cleanup: None) -> None:
    n = netns
    n.create("web", "--replicas", "4", "--rebalance", "--update-parallelism", "1")
    wait_for(lambda: n.running_on("web") == {"h1": 2, "h2": 2}, 60, "2 + 2 running")
    n.ctl("node", "update", "h1", "--availability", "drain")
    took = wait_for(lambda: n.running_on("web") == {"h2": 4}, 60, "all on h2")
    print(f"\ndrain: all 4 tasks on h2 in {took:.2f}s")
    assert not n.containers("h1", running=True)
    n.ctl("node", "update", "h1", "--availability", "active")
    took = wait_for(lambda: n.running_on("web") == {"h1": 2, "h2": 2}, 60, "2 + 2 again")
    print(f"active again: rebalanced to 2 + 2 in {took:.2f}s")
    # A service without --rebalance stays where it is.
    n.create("db", "--replicas", "2")
    n.ctl("node", "update", "h2", "--availability", "drain")
    wait_for(lambda: n.running_on("db") == {"h1": 2}, 60, "db on h1")
    n.ctl("node", "update", "h2", "--availability", "active")
    wait_for(lambda: n.running_on("web") == {"h1": 2, "h2": 2}, 60, "web rebalanced")
    assert n.running_on("db") == {"h1": 2}


def test_rolling_update_keeps_four_healthy_and_rolls_back_a_broken_image(
    netns: Netns, cleanup: None
) -> None:
    n = netns
    healthy_cmd = ["sh", "-c", "touch /tmp/ok; trap 'exit 0' TERM; sleep 3600 & wait"]
    n.create(
        "web", "--replicas", "6", "--update-parallelism", "2",
        "--update-failure-action", "rollback",
        "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "1",
        command=healthy_cmd,
    )  # fmt: skip

    def healthy() -> int:
        return sum(1 for t in n.live("web") if t["state"] == "running" and t["health"] == "healthy")

    wait_for(lambda: healthy() == 6, 90, "6 healthy")
    # Watch the update from the side: never fewer than 4 healthy.
    lowest = [6]
    stop = False

    def sample() -> None:
        while not stop:
            lowest[0] = min(lowest[0], healthy())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        n.ctl("service", "update", "web", "--env", "V=2", "--timeout", "120s", timeout=180)
    finally:
        stop = True
        sampler.join()
    assert healthy() == 6
    assert lowest[0] >= 4, f"only {lowest[0]} healthy during the update"
    print(f"\nrolling update, parallelism 2: at least {lowest[0]} of 6 healthy throughout")

    broken = f"{n.registry_addr}/busybox:missing"
    r = swarmctl(n.c.socket, "service", "update", "web", "--image", broken, "--timeout", "120s")
    assert r.code == 1 and "rolled back" in r.err, r.err
    wait_for(lambda: healthy() == 6, 90, "6 healthy after the rollback")
    svc = n.ctl("service", "inspect", "web", "--format", "json")
    assert svc["image"] == n.image and "V=2" in svc["env"]
    assert all(t["image"] == n.image for t in n.live("web"))


def test_etcd_stopped_for_20s_containers_keep_running(netns: Netns, cleanup: None) -> None:
    n = netns
    n.create("web", "--replicas", "4")
    wait_for(lambda: sum(n.running_on("web").values()) == 4, 60, "4 running")
    before = {t["id"] for t in n.live("web")}
    containers = {h: set(n.containers(h, running=True)) for h in ("h1", "h2")}
    etcd_pid = int((n.c.manager_dir / "etcd" / "etcd.pid").read_text())
    # The embedded etcd is the manager's child: stopping it (SIGSTOP) takes it away
    # from the manager and the agents' view as a crash would, and SIGCONT brings it
    # back with its data, as a restart would.
    os.kill(etcd_pid, signal.SIGSTOP)
    try:
        time.sleep(20)
        assert {h: set(n.containers(h, running=True)) for h in ("h1", "h2")} == containers
    finally:
        os.kill(etcd_pid, signal.SIGCONT)
    wait_for(lambda: sum(n.running_on("web").values()) == 4, 60, "4 running after etcd")
    assert {t["id"] for t in n.live("web")} == before, "tasks were replaced"
    assert {h: set(n.containers(h, running=True)) for h in ("h1", "h2")} == containers
    n.ctl("service", "scale", "web=6")
    assert sum(n.running_on("web").values()) == 6


def test_pending_task_says_why_in_service_ps(netns: Netns, cleanup: None) -> None:
    n = netns
    n.ctl(
        "service", "create", "--name", "nowhere", "--image", n.image, "--replicas", "1",
        "--constraint", "node.labels.zone==mars", "-d", *SLEEPER,
    )  # fmt: skip
    # Every node is named; the manager (no agent) is no candidate.
    expected = "no suitable node: 2 nodes not satisfying node.labels.zone==mars"

    def shown() -> bool:
        return expected in n.ctl("service", "ps", "nowhere")

    wait_for(shown, 30, "the pending reason in service ps")
    table = n.ctl("service", "ps", "nowhere")
    print("\n" + table)
    assert "pending" in table and "no suitable node" in table
