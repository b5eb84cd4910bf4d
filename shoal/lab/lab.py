"""A named lab: a Shoal cluster on netns hosts that outlives the command that made it.

`up` builds it (hosts on a private underlay, a registry with the busybox image, the
managers, per worker host a containerd and an agent), records it in STATE_ROOT/NAME and
returns, leaving the daemons detached. `down` removes everything a lab of that name
made. It works from what it finds, not only from the record, so it also cleans up
after a run that crashed half-way: processes whose command line names the lab's
directories or that live in its namespaces, mounts under its directories, namespaces
named after it or after its nodes' tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.lab.cluster import MANAGER_PORT, Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.etcd import HostEtcd
from shoal.lab.hosts import NETNS_DIR, Host, Hosts
from shoal.lab.procs import alive, answers, wait_for
from shoal.lab.registry import Registry
from shoal.lab.sweep import children, mounts_under, processes_in_netns, processes_mentioning
from shoal.lab.units import command_line
from shoal.proto import control_pb2 as api

STATE_ROOT = Path("/run/shoal-lab")
# containerd's content and snapshots: a disk, not /run's tmpfs.
DATA_ROOT = Path("/var/lib/shoal-lab")
NETNS_PREFIX = "shlab"
REGISTRY_PORT = 5000
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,19}")


class LabError(Exception):
    """A lab operation that cannot go on; the message is for the user."""


@dataclass
class Lab:
    name: str
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise LabError(f"bad lab name {self.name!r}: 1-20 of a-z, 0-9 and -")

    # ------------------------------------------------------------ where things are

    @property
    def state(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def data(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def prefix(self) -> str:
        """Every namespace of this lab's hosts is called PREFIX-<host>."""
        return f"{NETNS_PREFIX}-{self.name}"

    @property
    def socket(self) -> Path:
        return self.state / "manager" / "control.sock"

    def load(self) -> Lab:
        path = self.state / "lab.json"
        if not path.exists():
            raise LabError(f"no lab named {self.name} (see `shoal-lab ls`)")
        self.record = json.loads(path.read_text())
        return self

    def save(self) -> None:
        tmp = self.state / "lab.json.tmp"
        tmp.write_text(json.dumps(self.record, indent=2))
        tmp.rename(self.state / "lab.json")

    def host_netns(self, host: str) -> str:
        hosts = {h["name"]: h for h in self.record.get("hosts", [])}
        if host not in hosts:
            raise LabError(f"no host {host!r} in lab {self.name}: {', '.join(hosts) or 'none'}")
        return str(hosts[host]["netns"])

    def registry_addr(self) -> str:
        return str(self.record["registry"])

    # ------------------------------------------------------------ up

    def up(self, workers: int, managers: int = 1) -> None:
        if workers < 1 or managers < 1:
            raise LabError("a lab needs at least one manager and one worker")
        if self.state.exists() or self.leftover_namespaces():
            raise LabError(f"lab {self.name} exists: `shoal-lab down {self.name}` first")
        self.state.mkdir(parents=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self.record = {"name": self.name, "started": time.time(), "pids": {}}
        self.save()
        try:
            self._build(workers, managers)
        except BaseException:
            print(self.log_tails(), file=sys.stderr)
            self.down()
            raise

    def _build(self, workers: int, managers: int) -> None:
        names = [f"manager{i}" for i in range(1, managers + 1)]
        names += [f"worker{i}" for i in range(1, workers + 1)]
        hosts = Hosts(len(names), prefix=self.prefix, names=names)
        self.record["hosts"] = [
            {"name": h.name, "netns": h.netns, "addr": h.addr} for h in hosts.hosts
        ]
        self.save()
        m1 = hosts[0]
        registry = Registry(
            host=m1.addr, port=REGISTRY_PORT, wrap=m1.cmd(), data_dir=self.state / "registry"
        ).start()
        self._pid("registry", registry.proc)
        self.record["registry"] = registry.addr
        self.record["image"] = self.push(None, "busybox", "1")
        cluster = Cluster(hosts, self.state)
        extra = ["--hostname", m1.name]
        if managers > 1:
            # Managers share one etcd, on the first manager host's underlay address.
            etcd = HostEtcd(m1, self.state / "etcd", addr=m1.addr).start()
            self._pid("etcd", etcd.proc)
            extra += ["--etcd-endpoints", etcd.endpoint]
        self._pid("manager1", cluster.start_manager(*extra))
        for host in hosts.hosts[1:managers]:
            self._start_manager(cluster, host, extra[2:])
        for host in hosts.hosts[managers:]:
            ctd = Containerd(
                run=self.state / f"ctd-{host.name}",
                root=self.data / f"ctd-{host.name}",
                wrap=host.cmd(),
            ).start()
            self._pid(f"containerd-{host.name}", ctd.proc)
            cluster.start_worker(
                host,
                "--containerd-socket", str(ctd.socket),
                "--insecure-registry", registry.addr,
            )  # fmt: skip
            self._pid(host.name, host.procs[-1])
        self.record["socket"] = str(self.socket)
        self.save()

    def _start_manager(self, cluster: Cluster, host: Host, etcd_args: list[str]) -> None:
        """A further manager: joins the first, on the shared etcd."""
        token = cluster.control().GetCluster(api.GetClusterRequest()).cluster.join_tokens.manager
        token_file = self.state / "manager-join-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        state = self.state / host.name
        argv = command_line(
            "manager",
            {
                "SHOAL_STATE_DIR": str(state),
                "SHOAL_LISTEN_ADDR": f"{host.addr}:{MANAGER_PORT}",
                "SHOAL_ADVERTISE_ADDR": host.addr,
                "SHOAL_MANAGER_ARGS": f"--hostname {host.name} {' '.join(etcd_args)} "
                f"--join-addr {cluster.manager_addr} --join-token-file {token_file}",
            },
        )
        proc = host.spawn(argv, self.state / f"{host.name}.log")
        self._pid(host.name, proc)
        wait_for(lambda: answers(state / "control.sock"), 60, f"manager {host.name} up")

    def _pid(self, what: str, proc: subprocess.Popen[bytes] | int | None) -> None:
        pid = proc if isinstance(proc, int) else proc.pid if proc is not None else 0
        self.record["pids"][what] = pid
        self.save()

    def push(
        self, directory: Path | None, repo: str, tag: str, cmd: list[str] | None = None
    ) -> str:
        """Builds the busybox image (or `directory` as an image) and pushes it to the lab's
        registry, from the registry's host (the root namespace has no route to it)."""
        argv = [sys.executable, "-m", "shoal.lab.images", self.registry_addr(), repo, tag]
        if directory is not None:
            argv += ["--dir", str(directory.resolve())]
        if cmd:
            argv += ["--cmd", *cmd]
        nsenter = ["nsenter", f"--net={NETNS_DIR / self.host_netns('manager1')}"]
        out = subprocess.run([*nsenter, *argv], capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise LabError(f"push to {self.registry_addr()} failed: {out.stderr.strip()}")
        return out.stdout.split()[0]

    def log_tails(self) -> str:
        out = []
        for log in sorted(self.state.glob("*.log")) if self.state.exists() else []:
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {log} (last lines)\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------ down

    def node_ids(self) -> list[str]:
        return [p.read_text().strip() for p in self.state.glob("*/node_id")]

    def leftover_namespaces(self) -> list[str]:
        """This lab's host namespaces and its nodes' task namespaces."""
        if not NETNS_DIR.exists():
            return []
        tasks = tuple(f"shoal-{n[:10]}-" for n in self.node_ids())
        return [
            n
            for n in sorted(os.listdir(NETNS_DIR))
            if n.startswith(self.prefix + "-") or (tasks and n.startswith(tasks))
        ]

    def _task_netns_inodes(self) -> set[int]:
        return _inodes(n for n in self.leftover_namespaces() if n.startswith("shoal-"))

    def leftover_processes(self) -> list[int]:
        """Processes that name the lab's directories, or live in its namespaces."""
        inodes = _inodes(self.leftover_namespaces())
        found = set(processes_mentioning(f"{self.state}/", f"{self.data}/"))
        found |= set(processes_in_netns(inodes))
        mine = {os.getpid(), os.getppid()}
        return sorted(p for p in found if p not in mine and alive(p))

    def exists(self) -> bool:
        """Anything of this lab is there: its directories, namespaces or processes."""
        return bool(
            self.state.exists()
            or self.data.exists()
            or self.leftover_namespaces()
            or self.leftover_processes()
        )

    def leftover_mounts(self) -> list[str]:
        return mounts_under(self.state, self.data)

    def down(self) -> list[str]:
        """Removes everything; returns what could not be removed (empty: all gone)."""
        for _ in range(3):  # a daemon may spawn or restart something while we stop it
            pids = self.leftover_processes()
            if not pids:
                break
            # Containers and their shims go at once (the lab is going away); the daemons
            # get SIGTERM and their grace period.
            shims = [p for p in pids if b"containerd-shim" in _cmdline(p)]
            tasks = {*processes_in_netns(self._task_netns_inodes()), *shims, *children(shims)}
            _stop(sorted(tasks), grace_s=0)
            # swarmd before what it uses (etcd, containerd): a manager whose etcd went
            # first waits out its etcd timeouts before it exits.
            daemons = [p for p in pids if p not in tasks and b"shoal.daemon" in _cmdline(p)]
            _stop(daemons)
            _stop([p for p in pids if p not in tasks and p not in daemons])
        for target in self.leftover_mounts():
            subprocess.run(["umount", "-l", target], capture_output=True)
        for ns in self.leftover_namespaces():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.rmtree(self.data, ignore_errors=True)
        return [
            *(f"process {p}" for p in self.leftover_processes()),
            *(f"mount {m}" for m in self.leftover_mounts()),
            *(f"netns {n}" for n in self.leftover_namespaces()),
            *(f"dir {d}" for d in (self.state, self.data) if d.exists()),
        ]


def _inodes(namespaces: Iterable[str]) -> set[int]:
    out = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            out.add(os.stat(NETNS_DIR / ns).st_ino)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stop(pids: list[int], grace_s: float = 20) -> None:
    """SIGTERM to all (agents and managers shut down cleanly), SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if grace_s else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    slow = [p for p in pids if alive(p)]
    for pid in slow:
        if grace_s:
            print(f"shoal-lab: {pid} ({_cmdline(pid)[:80]!r}) ignored SIGTERM", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), 10, "killed processes gone")


def labs() -> list[str]:
    """Names of labs with a record, and of any that left namespaces behind."""
    names = set(os.listdir(STATE_ROOT)) if STATE_ROOT.exists() else set()
    if NETNS_DIR.exists():
        for ns in os.listdir(NETNS_DIR):
            if ns.startswith(NETNS_PREFIX + "-"):
                names.add(ns[len(NETNS_PREFIX) + 1 :].rsplit("-", 1)[0])
    return sorted(names)
