"""Failure timings on netns hosts: how fast Shoal notices and repairs.

    python -m bench.failover.run [--rounds 3]

1. worker lost: an agent is killed (SIGKILL) and its host's underlay link goes
   down at the same moment; time until every replica runs on the other hosts.
2. leader lost: two managers on one etcd; the leader is killed (SIGKILL) during
   a scale-up; time until the other one leads, and until the scale-up is done.
3. overlay convergence: a task starts on one host; time from its RUNNING
   report until a task on another host reaches it over the overlay.

Agents run the simulated runtime (no container start cost in the figures);
the hosts, links, sessions, etcd, overlay namespaces and VXLAN devices are
real. Docker Swarm's defaults for comparison (ANCHORS.md): a node is declared
down after ~15 s (5 s heartbeat x 3), then tasks restart after a 5 s delay.
Everything is torn down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.guard import exit_cleanly_on_signals
from shoal.lab.cluster import Cluster
from shoal.lab.etcd import HostEtcd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.probe import FetchError, Servers, fetch
from shoal.lab.procs import answers, control, wait_for
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

SWARM_NODE_LOSS_S = 20.0  # 15 s to declare the node down + 5 s restart delay


def reaches(client: pb.Task, server: pb.Task) -> bool:
    try:
        return fetch(client, server, 1) == server.id
    except FetchError:
        return False


def spec(name: str, replicas: int, network: str = "") -> pb.ServiceSpec:
    s = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    s.task.container.image = "registry.local/bench:1"
    s.task.container.command.extend(["sleep", "3600"])
    s.replicated.replicas = replicas
    if network:
        s.task.networks.add(target=network)
    return s


def running(ctl: api_grpc.ControlStub, service: str) -> list[pb.Task]:
    tasks = ctl.ListTasks(api.ListTasksRequest(service_ref=service)).tasks
    return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]


def scale(ctl: api_grpc.ControlStub, service: str, replicas: int) -> None:
    svc = ctl.GetService(api.GetServiceRequest(ref=service)).service.service
    new = pb.ServiceSpec()
    new.CopyFrom(svc.spec)
    new.replicated.replicas = replicas
    ctl.UpdateService(api.UpdateServiceRequest(ref=service, version=svc.meta.version, spec=new))


def agent_of(host: Host) -> subprocess.Popen[bytes]:
    return next(p for p in reversed(host.procs) if p.poll() is None)


# ---------------------------------------------------------------- 1. worker lost


def worker_lost(root: Path, rounds: int) -> list[float]:
    times = []
    with Hosts(4) as hosts:
        (root / "worker-lost").mkdir()
        c = Cluster(hosts, root / "worker-lost")
        c.start_manager()
        workers = {h.name: c.start_worker(h, "--runtime", "simulated") for h in hosts.hosts[1:]}
        ctl = c.control()
        ctl.CreateService(api.CreateServiceRequest(spec=spec("web", 6)))
        c.wait_running("web", 6)
        for r in range(rounds):
            victim = hosts[1 + r % 3]
            node_id = workers[victim.name]
            before = {t.id for t in running(ctl, "web") if t.node_id == node_id}
            agent = agent_of(victim)
            # The host vanishes: its link first, so not even a FIN leaves it.
            killed = time.monotonic()
            victim.run("ip", "link", "set", "eth0", "down")
            agent.kill()
            agent.wait()

            def replaced(node_id: str = node_id) -> bool:
                live = running(ctl, "web")
                return len(live) == 6 and all(t.node_id != node_id for t in live)

            wait_for(replaced, 60, f"replicas off {victim.name}")
            took = time.monotonic() - killed
            times.append(took)
            print(f"  worker lost, round {r + 1}: {len(before)} task(s) elsewhere in {took:.2f} s")
            victim.run("ip", "link", "set", "eth0", "up")
            c.start_worker(victim, "--runtime", "simulated")
    return times


# ---------------------------------------------------------------- 2. leader lost


class TwoManagers:
    """etcd and two managers on h0 (ports 4242 and 4252), agents on h1 and h2."""

    def __init__(self, hosts: Hosts, root: Path) -> None:
        self.hosts = hosts
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.etcd = HostEtcd(hosts[0], root / "etcd").start()
        # m1 is the lab cluster's manager (state dir, port); the agents join through it.
        self.cluster = Cluster(hosts, root)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("m1", 4242)
        token = self.ctl("m1").GetCluster(api.GetClusterRequest()).cluster.join_tokens
        self.start(
            "m2", 4252, "--join-addr", self.cluster.manager_addr, "--join-token", token.manager
        )
        for h in (hosts[1], hosts[2]):
            self.cluster.start_worker(h, "--runtime", "simulated")

    def state_dir(self, name: str) -> Path:
        return self.cluster.manager_dir if name == "m1" else self.root / name

    def start(self, name: str, port: int, *extra: str) -> None:
        h0 = self.hosts[0]
        self.procs[name] = h0.spawn(
            [
                sys.executable,
                "-m",
                "shoal.daemon",
                "manager",
                "--state-dir",
                str(self.state_dir(name)),
                "--listen-addr",
                f"{h0.addr}:{port}",
                "--etcd-endpoints",
                self.etcd.endpoint,
                "--hostname",
                name,
                "--leader-lease-ttl",
                "3",
                *extra,
            ],
            self.root / f"{name}.log",
        )
        wait_for(lambda: answers(self.state_dir(name) / "control.sock"), 60, f"manager {name} up")

    def ctl(self, name: str) -> api_grpc.ControlStub:
        return control(self.state_dir(name) / "control.sock")

    def leader(self, via: str) -> str:
        try:
            nodes = self.ctl(via).ListNodes(api.ListNodesRequest(), timeout=2).nodes
        except grpc.RpcError:
            return ""
        return next((n.description.hostname for n in nodes if n.manager_status.leader), "")


def leader_lost(root: Path, rounds: int) -> list[tuple[float, float]]:
    out = []
    with Hosts(3) as hosts:
        ms = TwoManagers(hosts, root / "leader-lost")
        ctl = ms.ctl("m1")

        def workers_ready(via: str = "m1") -> bool:
            nodes = ms.ctl(via).ListNodes(api.ListNodesRequest()).nodes
            return (
                sum(n.status.state == pb.NODE_READY and n.role == pb.ROLE_WORKER for n in nodes)
                == 2
            )

        wait_for(workers_ready, 60, "agents ready")
        ctl.CreateService(api.CreateServiceRequest(spec=spec("web", 3)))
        wait_for(lambda: len(running(ctl, "web")) == 3, 60, "3 running")
        replicas = 3
        for r in range(rounds):
            wait_for(lambda: bool(ms.leader("m1") or ms.leader("m2")), 30, "a leader")
            leader = ms.leader("m1") or ms.leader("m2")
            follower = "m2" if leader == "m1" else "m1"
            fctl = ms.ctl(follower)
            replicas += 3
            scale(fctl, "web", replicas)
            killed = time.monotonic()
            ms.procs[leader].kill()
            ms.procs[leader].wait()
            took_lead = wait_for(lambda f=follower: ms.leader(f) == f, 30, "new leader")
            wait_for(
                lambda c=fctl, n=replicas: len(running(c, "web")) == n, 60, f"{replicas} running"
            )
            took_all = time.monotonic() - killed
            exact = len(running(fctl, "web")) == replicas
            out.append((took_lead, took_all))
            print(
                f"  leader lost, round {r + 1}: new leader in {took_lead:.2f} s, "
                f"scale to {replicas} done {took_all:.2f} s after the kill (exact: {exact})"
            )
            # The killed manager comes back (same state dir) as a follower.
            port = 4242 if leader == "m1" else 4252
            ms.start(leader, port)
            wait_for(lambda f=follower: workers_ready(f), 30, "agents ready again")
    return out


# ---------------------------------------------------------------- 3. overlay convergence


def overlay_convergence(root: Path, rounds: int) -> list[float]:
    times = []
    with Hosts(3) as hosts:
        (root / "overlay").mkdir()
        c = Cluster(hosts, root / "overlay")
        c.start_manager()
        for h in (hosts[1], hosts[2]):
            c.start_worker(h, "--runtime", "simulated")
        ctl = c.control()
        ctl.CreateNetwork(
            api.CreateNetworkRequest(
                spec=pb.NetworkSpec(annotations=pb.Annotations(name="front"), driver="overlay")
            )
        )
        ctl.CreateService(api.CreateServiceRequest(spec=spec("web", 2, "front")))
        first = c.wait_running("web", 2)
        servers = Servers(root)
        try:
            for r in range(rounds):
                scale(ctl, "web", 3 + r)
                live = c.wait_running("web", 3 + r)
                known = {t.id for t in first}
                new = max(
                    (t for t in live if t.id not in known), key=lambda t: t.meta.created_at_ms
                )
                first = live
                ran_at_ms = new.status.timestamp_ms
                servers.serve(new)
                client = next(t for t in live if t.node_id != new.node_id)
                wait_for(lambda a=client, b=new: reaches(a, b), 10, "reachable")
                took = time.time() - ran_at_ms / 1000
                times.append(took)
                print(f"  overlay, round {r + 1}: reachable {took * 1000:.0f} ms after RUNNING")
        finally:
            servers.close()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    exit_cleanly_on_signals()
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-failover-"))
    try:
        lost = worker_lost(root, args.rounds)
        leaders = leader_lost(root, args.rounds)
        overlay = overlay_convergence(root, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results: dict[str, Any] = {
        "worker_lost_s": round(statistics.median(lost), 2),
        "worker_lost_vs_swarm_defaults": round(statistics.median(lost) / SWARM_NODE_LOSS_S, 2),
        "leader_change_s": round(statistics.median(lead for lead, _ in leaders), 2),
        "leader_kill_to_scaled_s": round(statistics.median(done for _, done in leaders), 2),
        "overlay_reachable_ms": round(statistics.median(overlay) * 1000),
    }
    print("\n| what | median | note |\n|---|---|---|")
    print(
        f"| worker lost (agent killed + link down) -> all replicas elsewhere | "
        f"{results['worker_lost_s']} s | Swarm defaults ~{SWARM_NODE_LOSS_S:.0f} s: "
        f"{results['worker_lost_vs_swarm_defaults']}x |"
    )
    print(
        f"| leader killed -> other manager leads | {results['leader_change_s']} s | lease TTL 3 s |"
    )
    print(
        f"| leader killed during scale-up -> scale-up done | "
        f"{results['leader_kill_to_scaled_s']} s | |"
    )
    print(
        f"| task RUNNING -> reachable from another host | {results['overlay_reachable_ms']} ms | |"
    )
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, **results}, indent=2))


if __name__ == "__main__":
    main()
