"""The Shoal side on netns hosts: a manager (embedded etcd) on a host of its own, and
three workers, one per host, each on a containerd of its own (as shoal-lab builds them:
shoal/lab/cluster.py, the daemons' systemd command lines)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from bench.vs_swarm.common import LIMIT_S, sh, until
from bench.vs_swarm.shoal_side import Shoal, stored_as
from shoal.lab.cluster import Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.procs import terminate
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb


class ShoalHosts(Shoal):
    """Steps through swarmctl, as the one-node Shoal; the containers are on three hosts."""

    def __init__(
        self, hosts: Hosts, manager: Host, workers: list[Host], root: Path, prefix: str
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # Not Shoal.__init__: no manager process of its own, no one-node containerd.
        self.root = root
        self.image = ""
        self.cluster = Cluster(hosts, root)
        self.cluster.manager_host = manager
        self.workers = workers
        self.ctds = {
            h.name: Containerd(
                run=Path(f"/run/{prefix}-{h.name}"), root=root / f"ctd-{h.name}", wrap=h.cmd()
            )
            for h in workers
        }
        self.nodes: dict[str, str] = {}
        self.registry = ""

    @property
    def socket(self) -> Path:
        return self.cluster.socket

    def worker_args(self, host: Host) -> list[str]:
        sock = str(self.ctds[host.name].socket)
        return ["--containerd-socket", sock, "--insecure-registry", self.registry]

    def start_hosts(self, registry: str) -> None:
        self.registry = registry
        # Like Docker's dockerd, the manager asks the registry to pin the image's tag.
        manager = self.cluster.manager_host.name
        self.cluster.start_manager("--hostname", manager, "--insecure-registry", registry)
        for h in self.workers:
            self.ctds[h.name].start()
            self.nodes[h.name] = self.cluster.start_worker(h, *self.worker_args(h))

        def ready() -> bool:
            nodes = json.loads(self.ctl("node", "ls", "--format", "json"))
            return [n["status"] for n in nodes if n["role"] == "worker"] == ["ready"] * 3

        until(ready, "Shoal workers ready", 60)  # start-up only

    def ctr_on(self, host: str, *args: str) -> str:
        ns = f"shoal-{self.nodes[host]}"
        return sh(["ctr", "-a", str(self.ctds[host].socket), "-n", ns, *args])

    def containers(self, host: str) -> int:
        return len(self.ctr_on(host, "containers", "ls", "-q").split())

    def running_on(self, host: str) -> int:
        """Containers whose process runs (`ctr task ls`: TASK PID STATUS)."""
        rows = self.ctr_on(host, "task", "ls").splitlines()[1:]
        return sum(1 for r in rows if r.split()[-1:] == ["RUNNING"])

    def load(self, image: str) -> str:
        """A warm-up service with two replicas per host (each agent pulls the image);
        returns the image's manifest digest, checked to be the same on every host."""
        self.image = image
        self.create("warmup", 2 * len(self.workers))
        self.remove("warmup")
        digests = set()
        for h in self.workers:
            for line in self.ctr_on(h.name, "images", "ls").splitlines()[1:]:
                ref, _, digest, *_ = line.split()
                if stored_as(ref, image):
                    digests.add(digest)
                    break
            else:
                raise RuntimeError(f"{image} not pulled on {h.name} in the warm-up")
        if len(digests) != 1:
            raise RuntimeError(f"the hosts hold different digests: {digests}")
        return digests.pop()

    def remove(self, service: str) -> float:
        """service rm -> no container left on any host (`ctr containers ls` on each)."""
        t = time.perf_counter()
        self.ctl("service", "rm", service)

        def gone() -> bool:
            return all(self.containers(h.name) == 0 for h in self.workers)

        return until(gone, f"{service}: containers removed") - t

    def host_lost(self, service: str, n: int, victim: int) -> tuple[float, float]:
        """As SwarmHosts.host_lost: the victim's link down, its agent SIGKILLed; followed
        over the manager's watch until n tasks run, none on the victim."""
        host = self.workers[victim]
        node = self.nodes[host.name]
        agent = next(p for p in reversed(host.procs) if p.poll() is None)
        channel, stub = self.control()

        def moved() -> bool:
            got = stub.ListTasks(api.ListTasksRequest(service_ref=service), timeout=10).tasks
            run = [t for t in got if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]
            return len(run) == n and all(t.node_id != node for t in run)

        try:
            tasks = stub.ListTasks(api.ListTasksRequest(service_ref=service), timeout=10).tasks
            assert any(t.node_id == node for t in tasks), f"no task on {host.name}"
            watch = stub.WatchService(api.WatchServiceRequest(ref=service), timeout=LIMIT_S)
            next(watch)  # the watch is on before the fault
            t = time.perf_counter()
            wall = time.time()
            host.run("ip", "link", "set", "eth0", "down")
            agent.kill()
            agent.wait()
            for progress in watch:
                if progress.service.running == n and moved():
                    return time.perf_counter() - t, wall
            raise TimeoutError(f"{service}: tasks not moved off {host.name}")
        finally:
            channel.close()

    def restore(self, service: str, victim: int) -> float:
        """As SwarmHosts.restore: link up, the agent started again; seconds until it is
        registered and no container of its old tasks runs (they stay, stopped, until
        their tasks are removed, as Docker's do)."""
        host = self.workers[victim]
        t = time.perf_counter()
        host.run("ip", "link", "set", "eth0", "up")
        self.cluster.start_worker(host, *self.worker_args(host))
        node = self.nodes[host.name]
        until(
            lambda: self.cluster.node_ready(node) and self.running_on(host.name) == 0,
            f"{host.name} ready, its old containers stopped",
        )
        return time.perf_counter() - t

    def stop(self) -> None:
        """Services removed, agents and manager stopped, then the containerds."""
        if self.socket.exists():
            with contextlib.suppress(Exception):
                for svc in self.ctl("service", "ls", "-q", check=False).split():
                    self.ctl("service", "rm", svc, check=False)
                until(lambda: all(self.containers(h.name) == 0 for h in self.workers), "", 30)
        hosts = [*self.workers, self.cluster.manager_host]
        for proc in [p for h in hosts for p in h.procs]:
            terminate(proc)
        for ctd in self.ctds.values():
            with contextlib.suppress(Exception):
                ctd.stop()
