"""The netns cluster tests/test_selfheal.py runs in, and what its tests reach into.

h0 runs etcd, the manager and a registry; h1 and h2 run agents on the session's
containerd. One Bed serves the module; `tb` heals it before and after each test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.etcd import HostEtcd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.procs import Result, swarmctl, wait_for
from shoal.lab.registry import Registry
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

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
            push = h0.run(sys.executable, "-m", "shoal.lab.images", registry.addr, cwd=str(REPO))
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
