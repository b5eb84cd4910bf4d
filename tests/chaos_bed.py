"""The chaos test's cluster: a 3-member TLS etcd on m1, m2 and e3, managers on m1 and m2
(m2 joins m1 on the same etcd), agents on w1..w3 each with its own containerd, and the
registry on m1. Every daemon can be killed and started again with its command line.

It also answers the test's ground-truth questions (containers per containerd, task
namespaces, links and mounts left) and tears everything down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shoal.lab.cluster import MANAGER_PORT, Cluster
from shoal.lab.containerd import Containerd, containers
from shoal.lab.etcd import HostEtcd, etcd_cluster
from shoal.lab.hosts import NETNS_DIR, Host, Hosts
from shoal.lab.procs import answers, control, wait_for
from shoal.lab.registry import Registry
from shoal.lab.sweep import mounts_under, processes_mentioning
from shoal.lab.units import command_line
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc

REPO = Path(__file__).resolve().parents[1]
HOSTS = ["m1", "m2", "e3", "w1", "w2", "w3"]


@dataclass
class Daemon:
    """A swarmd process on a host, with what it takes to start it again."""

    name: str
    host: Host
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.host.spawn(self.argv, self.log)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as a crash or the OOM killer."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Worker:
    daemon: Daemon
    containerd: Containerd
    node_id: str


class Bed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts = Hosts(len(HOSTS), names=HOSTS)
        self.by_name = {h.name: h for h in self.hosts.hosts}
        self.etcd: list[HostEtcd] = []
        self.managers: list[Daemon] = []
        self.workers: list[Worker] = []
        self.registry: Registry | None = None
        self.image = ""
        self.cluster = Cluster(self.hosts, root)
        self.stubs: dict[str, api_grpc.ControlStub] = {}

    # ------------------------------------------------------------ building it

    def build(self) -> None:
        m1, m2 = self.by_name["m1"], self.by_name["m2"]
        self.etcd = etcd_cluster([m1, m2, self.by_name["e3"]], self.root / "etcd")
        self.registry = Registry(host=m1.addr, port=5000, wrap=m1.cmd()).start()
        push = m1.run(sys.executable, "-m", "shoal.lab.images", self.registry.addr, cwd=str(REPO))
        self.image = push.stdout.split()[0]
        eps = ",".join(e.endpoint for e in self.etcd)
        common = [
            "--etcd-endpoints", eps, *self.etcd[0].client_args(),
            "--insecure-registry", self.registry.addr,
        ]  # fmt: skip
        argv = self.cluster.manager_argv("--hostname", "m1", *common)
        self.cluster.start_manager("--hostname", "m1", *common)
        self.managers.append(Daemon("m1", m1, argv, self.root / "manager.log", m1.procs[-1]))
        self.managers.append(self._second_manager(m2, common))
        for name in ("w1", "w2", "w3"):
            self._worker(self.by_name[name])

    def _second_manager(self, host: Host, common: list[str]) -> Daemon:
        token = self.api().GetCluster(api.GetClusterRequest()).cluster.join_tokens.manager
        token_file = self.root / "manager-join-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        argv = command_line(
            "manager",
            {
                "SHOAL_STATE_DIR": str(self.root / host.name),
                "SHOAL_LISTEN_ADDR": f"{host.addr}:{MANAGER_PORT}",
                "SHOAL_ADVERTISE_ADDR": host.addr,
                "SHOAL_MANAGER_ARGS": " ".join(
                    ["--hostname", host.name, *common, "--join-addr", self.cluster.manager_addr,
                     "--join-token-file", str(token_file)]
                ),
            },
        )  # fmt: skip
        d = Daemon(host.name, host, argv, self.root / f"{host.name}.log")
        d.start()
        wait_for(lambda: answers(self.socket(d)), 60, f"manager {host.name} up")
        return d

    def _worker(self, host: Host) -> None:
        assert self.registry is not None
        ctd = Containerd(
            run=Path(f"/run/{self.hosts.prefix}-ctd-{host.name}"),
            root=Path(f"/var/lib/{self.hosts.prefix}-ctd-{host.name}"),
            wrap=host.cmd(),
        ).start()
        extra = ["--containerd-socket", str(ctd.socket), "--insecure-registry", self.registry.addr]
        node_id = self.cluster.start_worker(host, *extra)
        d = Daemon(
            host.name,
            host,
            self.cluster.worker_argv(host, *extra),
            self.root / f"{host.name}.log",
            host.procs[-1],
        )
        self.workers.append(Worker(d, ctd, node_id))

    # ------------------------------------------------------------ reaching it

    def socket(self, d: Daemon) -> Path:
        return (
            self.cluster.manager_dir / "control.sock"
            if d.name == "m1"
            else (self.root / d.name / "control.sock")
        )

    def api(self) -> api_grpc.ControlStub:
        """The control API of a manager that runs (m1 first; m1's while building)."""
        for d in self.managers:
            if d.running():
                return self.stub(d)
        return self.cluster.control()

    def stub(self, d: Daemon) -> api_grpc.ControlStub:
        if d.name not in self.stubs:
            self.stubs[d.name] = control(self.socket(d))
        return self.stubs[d.name]

    def containers(self) -> dict[str, dict[str, tuple[str, int]]]:
        """Per worker host: its node's containers, straight from its containerd."""
        return {w.daemon.name: containers(w.containerd.socket, w.node_id) for w in self.workers}

    def task_namespaces(self) -> list[str]:
        mine = tuple(f"shoal-{w.node_id[:10]}-" for w in self.workers)
        return [n for n in os.listdir(NETNS_DIR) if n.startswith(mine)]

    def worker_links(self) -> dict[str, list[str]]:
        """Links in each worker host's namespace other than its loopback and uplink."""
        out = {}
        for w in self.workers:
            text = w.daemon.host.run("ip", "-o", "link").stdout
            names = [line.split(":")[1].strip().split("@")[0] for line in text.splitlines()]
            out[w.daemon.name] = [n for n in names if n not in ("lo", "eth0")]
        return out

    def task_mounts(self) -> list[str]:
        """Container root filesystems and task namespaces still mounted."""
        dirs = [p for w in self.workers for p in (w.containerd.run, w.containerd.root)]
        tasks = tuple(f"{NETNS_DIR}/{n}" for n in self.task_namespaces())
        with open("/proc/mounts") as f:
            netns = [line.split()[1] for line in f if tasks and line.split()[1].startswith(tasks)]
        return [*mounts_under(*dirs), *netns]

    def leftovers(self) -> list[str]:
        """After close(): namespaces, processes, mounts and directories of this bed."""
        prefix = self.hosts.prefix
        left = [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(prefix)]
        left += [f"netns {n}" for n in self.task_namespaces()]
        pids = processes_mentioning(str(self.root) + "/", f"/run/{prefix}-", f"/var/lib/{prefix}-")
        left += [f"process {p}" for p in pids if p != os.getpid()]
        left += [f"mount {m}" for m in self.task_mounts()]
        left += [f"dir {p}" for p in Path("/run").glob(f"{prefix}-*")]
        left += [f"dir {p}" for p in Path("/var/lib").glob(f"{prefix}-*")]
        return left

    def log_tails(self) -> str:
        out = []
        for log in sorted(self.root.glob("*.log")):
            out.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-2500:])
        return "\n".join(out)

    # ------------------------------------------------------------ tearing it down

    def close(self) -> None:
        self.hosts.node_ids = [w.node_id for w in self.workers]
        # Agents and managers go first (cleanly), then containerd with its containers.
        for d in [w.daemon for w in self.workers] + self.managers:
            if d.running():
                assert d.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.proc.pid, signal.SIGTERM)
        for w in self.workers:
            w.containerd.stop()
        if self.registry is not None:
            self.registry.stop()
        self.hosts.close()
