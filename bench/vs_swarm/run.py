"""Shoal against Docker Swarm on real containers, side by side on this machine.

    python -m bench.vs_swarm.run [--rounds 3] [--replicas 20] [--scale-to 40] [--out PATH]

Docker side: Debian's docker.io (installed with apt-get if missing; its system
service is neither started nor used), a dockerd of our own: own data root, exec
root, socket, pidfile and config file, no iptables, no bridge, no ip forwarding.
It runs in a network namespace of its own (shoal/lab/hosts.py), because
`docker swarm init` adds docker_gwbridge, with an address and a route, to the
namespace dockerd runs in. A local registry runs in that namespace too, and
the swarm is `docker swarm init --advertise-addr 127.0.0.1`.

Shoal side: a manager (embedded etcd) and one worker agent on a private
containerd (shoal/lab), a local registry, all on loopback.

Both registries serve the busybox image shoal/lab/images.py builds (same
bytes, same digest; checked). Each system first runs a one-replica warm-up
service (pulls the image), then each round runs both systems, alternating
which goes first, through their own CLIs:

  create   service create, N replicas        -> N/N running
  scale    service scale N -> M               -> M/M running
  replace  SIGKILL one task's container process (pid from the runtime:
           `docker inspect`, `ctr task ls`)   -> a new task running, M/M
  remove   service rm                         -> no container of the service left

Swarm is observed by polling its CLI every 100 ms (`docker service ls`,
`docker service ps`, `docker ps -a`); it has no watch. Its create and scale
are run with -d: without it, the docker CLI waits a further 5 s "to verify that
tasks are stable" once they run. Shoal's create and scale
are `swarmctl` without --detach, which follows the service over the manager's
watch and returns when it converged; the replacement is followed over the same
watch (WatchService, then ListTasks), the removal by polling `ctr containers ls`
every 100 ms. Every time includes the CLI's own start. The containers run
`sh -c "trap 'exit 0' TERM; sleep 3600 & wait"`: a sleep that stops on SIGTERM,
so removal measures the orchestrators, not the 10 s stop grace period both
default to. Restart delays are both systems' defaults, read back from the
services and reported.

After each create, both systems' own task records give a timeline (last task
created, first and last task running, from the service's creation): what the
orchestrator and the runtime took, without the CLIs and polling.

Prints a table of medians and Shoal/Swarm ratios, writes JSON (--out).
Everything it starts is stopped and removed at the end, also on failure or a
signal.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import grpc

from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.images import build_image, push_image
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.lab.registry import Registry
from shoal.lab.sweep import children, mounts_under, processes_mentioning
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
# Debian's docker.io CLI, the daemon's own version (another `docker` may come first in PATH).
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
SWARMCTL = Path(sys.executable).with_name("swarmctl")
POLL_S = 0.1
LIMIT_S = 180.0
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
STEPS = ("create", "scale", "replace", "remove")
GOALS = {"create": 0.33, "scale": 0.33, "replace": 0.2}
# Files and directories dockerd makes outside its data and exec roots; removed
# afterwards unless they were there before.
DOCKERD_SIDE_PATHS = (Path("/run/docker/plugins"), Path("/run/docker"))


def sh(
    argv: list[str], env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])}: {out.stderr.strip()[-2000:]}")
    return out.stdout


def until(check: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> float:
    """Polls `check` every POLL_S until it holds; returns time.perf_counter() then."""
    deadline = time.perf_counter() + limit_s
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not in {limit_s:.0f}s: {what}")
        time.sleep(POLL_S)
    return time.perf_counter()


def ensure_docker() -> None:
    """Debian's docker.io, installed if missing (apt-get update only if apt knows no candidate)."""
    if Path(DOCKERD).exists() and Path(DOCKER).exists():
        return
    print("installing Debian's docker.io ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    policy = sh(["apt-cache", "policy", "docker.io"], check=False)
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        [*apt, "install", "-y", "docker.io"], check=True, env=env, stdout=subprocess.DEVNULL
    )


class System(Protocol):
    name: str

    def create(self, service: str, n: int) -> float: ...
    def scale(self, service: str, n: int) -> float: ...
    def replace(self, service: str, n: int) -> float: ...
    def remove(self, service: str) -> float: ...
    def restart_delay_s(self, service: str) -> float: ...
    def timeline(self, service: str) -> dict[str, float]: ...


class Swarm:
    """Our own dockerd in a netns host, one-node swarm; steps through the docker CLI."""

    name = "Swarm"

    def __init__(self, host: Host, root: Path) -> None:
        self.host = host
        self.root = root
        self.socket = root / "docker.sock"
        self.exec_root = root / "x"  # short: containerd's sockets live under it
        self.proc: subprocess.Popen[bytes] | None = None
        self.image = ""
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(root / "cli"),  # not ~/.docker
        }

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return sh([DOCKER, *args], env=self.env, check=check, timeout=timeout)

    def start(self, registry: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "daemon.json"
        # Not /etc/docker/daemon.json; the daemon's key where we can remove it.
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        self.proc = self.host.spawn(
            [
                DOCKERD,
                "--config-file",
                str(config),
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.exec_root),
                "--host",
                f"unix://{self.socket}",
                "--pidfile",
                str(self.root / "docker.pid"),
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge=none",
                "--insecure-registry",
                registry,
            ],
            self.root / "dockerd.log",
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("dockerd exited:\n" + self.log_tail())
            return bool(
                self.docker("version", "--format", "{{.Server.Version}}", check=False).strip()
            )

        until(up, "dockerd answers", 60)  # start-up only
        self.docker(
            "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:2377"
        )

    def log_tail(self) -> str:
        log = self.root / "dockerd.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def load(self, image: str) -> str:
        """Pulls the image; returns its manifest digest."""
        self.image = image
        self.docker("pull", "-q", image, timeout=300)
        digests = self.docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
        return str(json.loads(digests)[0].split("@", 1)[1])

    def version(self) -> str:
        return self.docker("version", "--format", "{{.Server.Version}}").strip()

    def replicas(self, service: str) -> str:
        out = self.docker(
            "service",
            "ls",
            "--filter",
            f"name={service}",
            "--format",
            "{{.Name}} {{.Replicas}}",
            check=False,
        )
        for line in out.splitlines():
            name, _, replicas = line.partition(" ")
            if name == service:
                return replicas.split(" ")[0]
        return ""

    def create(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.docker(
            "service",
            "create",
            "-d",
            "--name",
            service,
            "--replicas",
            str(n),
            self.image,
            *COMMAND,
        )
        return until(lambda: self.replicas(service) == f"{n}/{n}", f"{service} {n}/{n}") - t

    def scale(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.docker("service", "scale", "-d", f"{service}={n}")
        return until(lambda: self.replicas(service) == f"{n}/{n}", f"{service} {n}/{n}") - t

    def _label(self, service: str) -> str:
        return f"label=com.docker.swarm.service.name={service}"

    def replace(self, service: str, n: int) -> float:
        rows = self.docker(
            "ps",
            "--filter",
            self._label(service),
            "--format",
            '{{.ID}} {{.Label "com.docker.swarm.task.id"}}',
        ).split()
        container, victim = rows[0], rows[1]
        pid = int(self.docker("inspect", "--format", "{{.State.Pid}}", container))

        def replaced() -> bool:
            out = self.docker(
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--no-trunc",
                "--format",
                "{{.ID}} {{.CurrentState}}",
                check=False,
            )
            rows = [line.split(" ", 1) for line in out.splitlines() if line]
            running = {r[0] for r in rows if len(r) == 2 and r[1].startswith("Running")}
            return len(rows) == n and len(running) == n and victim not in running

        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        return until(replaced, f"{service}: task {victim} replaced") - t

    def remove(self, service: str) -> float:
        t = time.perf_counter()
        self.docker("service", "rm", service)

        def gone() -> bool:
            out = self.docker("ps", "-aq", "--filter", self._label(service), check=False)
            return not out.strip()

        return until(gone, f"{service}: containers removed") - t

    def restart_delay_s(self, service: str) -> float:
        policy = json.loads(
            self.docker(
                "service",
                "inspect",
                service,
                "--format",
                "{{json .Spec.TaskTemplate.RestartPolicy}}",
            )
        )
        return float(policy["Delay"]) / 1e9

    def timeline(self, service: str) -> dict[str, float]:
        """Seconds from the service's creation until its last task was created and its
        first and last task ran (the tasks' own timestamps)."""
        created = _ts(json.loads(self.docker("service", "inspect", service))[0]["CreatedAt"])
        ids = self.docker(
            "service", "ps", service, "--filter", "desired-state=running", "-q", "--no-trunc"
        ).split()
        tasks = json.loads(self.docker("inspect", "--type", "task", *ids))
        ran = [_ts(t["Status"]["Timestamp"]) for t in tasks if t["Status"]["State"] == "running"]
        return {
            "tasks_created": max(_ts(t["CreatedAt"]) for t in tasks) - created,
            "first_running": min(ran) - created,
            "last_running": max(ran) - created,
        }

    def stop(self) -> None:
        """Leaves the swarm, stops dockerd (which stops its containerd), then kills and
        unmounts whatever is left under our directories."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for svc in self.docker("service", "ls", "-q", check=False, timeout=30).split():
                    self.docker("service", "rm", svc, check=False, timeout=30)
                self.docker("swarm", "leave", "--force", check=False, timeout=60)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        leftovers = processes_mentioning(self.root)
        for pid in [*children(leftovers), *leftovers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for target in mounts_under(self.root):
            subprocess.run(["umount", "-l", target], capture_output=True)


class Shoal:
    """A manager (embedded etcd) and one worker on a private containerd; steps through swarmctl."""

    name = "Shoal"

    def __init__(self, root: Path, containerd: Containerd) -> None:
        self.root = root
        self.containerd = containerd
        self.manager: ManagerProcess | None = None
        self.worker: WorkerProcess | None = None
        self.image = ""

    def start(self) -> str:
        self.manager = ManagerProcess(self.root / "m1").start()
        token = self.manager.ctl("cluster", "join-token", "worker", "-q").out.strip()
        self.worker = WorkerProcess(
            self.root / "w1",
            self.manager.addr,
            token,
            "--hostname",
            "w1",
            "--containerd-socket",
            str(self.containerd.socket),
        ).start()

        def ready() -> bool:
            nodes = json.loads(self.ctl("node", "ls", "--format", "json"))
            return any(n["role"] == "worker" and n["status"] == "ready" for n in nodes)

        until(ready, "Shoal worker ready", 60)  # start-up only
        return self.worker.node_id

    @property
    def env(self) -> dict[str, str]:
        assert self.manager is not None
        return {**os.environ, "SWARM_SOCKET": str(self.manager.socket)}

    def ctl(self, *args: str, check: bool = True) -> str:
        cli = [str(SWARMCTL)] if SWARMCTL.exists() else [sys.executable, "-m", "shoal.swarmctl"]
        return sh([*cli, *args], env=self.env, check=check, timeout=LIMIT_S + 30)

    def ctr(self, *args: str) -> str:
        assert self.worker is not None
        ns = f"shoal-{self.worker.node_id}"
        return sh(["ctr", "-a", str(self.containerd.socket), "-n", ns, *args])

    def control(self) -> tuple[grpc.Channel, api_grpc.ControlStub]:
        assert self.manager is not None
        channel = grpc.insecure_channel(f"unix://{self.manager.socket}")
        return channel, api_grpc.ControlStub(channel)

    def load(self, image: str) -> str:
        """Runs a one-replica warm-up service (the agent pulls the image); returns the
        image's manifest digest as containerd stored it."""
        self.image = image
        self.create("warmup", 1)
        self.remove("warmup")
        for line in self.ctr("images", "ls").splitlines()[1:]:
            ref, _, digest, *_ = line.split()
            if ref == image:
                return digest
        raise RuntimeError(f"{image} not in containerd after the warm-up")

    def version(self) -> str:
        git = ["git", "-C", str(REPO), "describe", "--always", "--dirty"]
        return sh(git, check=False).strip()

    def running(self, service: str) -> int:
        (svc,) = [
            s
            for s in json.loads(self.ctl("service", "ls", "--format", "json"))
            if s["name"] == service
        ]
        return int(svc["running"])

    def create(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.ctl(
            "service",
            "create",
            "--name",
            service,
            "--image",
            self.image,
            "--replicas",
            str(n),
            "--timeout",
            f"{LIMIT_S:.0f}s",
            *COMMAND,
        )
        took = time.perf_counter() - t
        assert self.running(service) == n, f"{service}: swarmctl returned before {n} ran"
        return took

    def scale(self, service: str, n: int) -> float:
        t = time.perf_counter()
        self.ctl("service", "scale", f"{service}={n}", "--timeout", f"{LIMIT_S:.0f}s")
        took = time.perf_counter() - t
        assert self.running(service) == n, f"{service}: swarmctl returned before {n} ran"
        return took

    def replace(self, service: str, n: int) -> float:
        tasks = json.loads(self.ctl("service", "ps", service, "--format", "json"))
        victim = next(
            t for t in tasks if t["desired_state"] == "running" and t["state"] == "running"
        )
        pid = 0
        for line in self.ctr("task", "ls").splitlines()[1:]:
            container, task_pid, _ = line.split()
            if container == victim["container_id"]:
                pid = int(task_pid)
        assert pid, f"no containerd task for {victim['container_id']}"
        channel, stub = self.control()

        def replaced() -> bool:
            got = stub.ListTasks(api.ListTasksRequest(service_ref=service), timeout=10).tasks
            running = {
                x.id for x in got if x.desired_state == pb.RUNNING and x.status.state == pb.RUNNING
            }
            return len(running) == n and victim["id"] not in running

        try:
            watch = stub.WatchService(api.WatchServiceRequest(ref=service), timeout=LIMIT_S)
            next(watch)  # the watch is on before the kill
            t = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            for progress in watch:
                if progress.service.running == n and replaced():
                    return time.perf_counter() - t
            raise TimeoutError(f"{service}: task {victim['id']} not replaced")
        finally:
            channel.close()

    def remove(self, service: str) -> float:
        t = time.perf_counter()
        self.ctl("service", "rm", service)
        return (
            until(
                lambda: not self.ctr("containers", "ls", "-q").strip(),
                f"{service}: containers removed",
            )
            - t
        )

    def restart_delay_s(self, service: str) -> float:
        svc = json.loads(self.ctl("service", "inspect", service, "--format", "json"))
        return float(svc["restart_policy"]["delay_ms"]) / 1000

    def timeline(self, service: str) -> dict[str, float]:
        """As Swarm.timeline, from the manager's records."""
        channel, stub = self.control()
        try:
            svc = stub.GetService(api.GetServiceRequest(ref=service), timeout=10).service
            got = stub.ListTasks(api.ListTasksRequest(service_ref=service), timeout=10).tasks
        finally:
            channel.close()
        created = svc.service.meta.created_at_ms / 1000
        tasks = [t for t in got if t.desired_state == pb.RUNNING]
        ran = [t.status.timestamp_ms / 1000 for t in tasks if t.status.state == pb.RUNNING]
        return {
            "tasks_created": max(t.meta.created_at_ms for t in tasks) / 1000 - created,
            "first_running": min(ran) - created,
            "last_running": max(ran) - created,
        }

    def stop(self) -> None:
        if self.manager is not None and self.manager.socket.exists():
            with contextlib.suppress(Exception):
                for svc in self.ctl("service", "ls", "-q", check=False).split():
                    self.ctl("service", "rm", svc, check=False)
                if self.worker is not None:
                    until(
                        lambda: not self.ctr("containers", "ls", "-q").strip(),
                        "Shoal containers removed",
                        30,
                    )
        if self.worker is not None:
            self.worker.stop()
        if self.manager is not None:
            self.manager.stop()


def _ts(stamp: str) -> float:
    """RFC 3339 with up to nanoseconds (Docker's) -> seconds since the epoch."""
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp.strip())
    if m is None:
        raise ValueError(f"not a timestamp: {stamp!r}")
    whole = datetime.datetime.fromisoformat(m.group(1) + m.group(3).replace("Z", "+00:00"))
    return whole.timestamp() + float(m.group(2) or 0)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _ignore_signals() -> None:
    """While cleaning up: a second Ctrl-C must not leave half the mess behind."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _remove_new(paths: tuple[Path, ...], existed: set[Path]) -> None:
    for p in paths:
        if p not in existed:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty: never anything someone else put there


def run_bench(args: argparse.Namespace, root: Path, stack: ExitStack) -> dict[str, Any]:
    hosts = Hosts(1)
    stack.callback(hosts.close)
    swarm = Swarm(hosts[0], root / "docker")
    docker_reg = Registry(host="127.0.0.1", port=5000, wrap=hosts[0].cmd())
    stack.callback(docker_reg.stop)
    docker_reg.start()
    stack.callback(swarm.stop)
    print(
        "starting dockerd (own netns, data root, exec root, socket) and a one-node swarm",
        flush=True,
    )
    swarm.start(docker_reg.addr)
    docker_ref = (
        hosts[0]
        .run(
            sys.executable, "-m", "shoal.lab.images", docker_reg.addr, "busybox", cwd=str(REPO)
        )
        .stdout.split()[0]
    )

    print("starting Shoal: containerd, registry, manager (embedded etcd), one worker", flush=True)
    containerd = stack.enter_context(Containerd())
    shoal_reg = stack.enter_context(Registry())
    shoal_ref = push_image(shoal_reg.addr, "busybox", "latest")
    shoal = Shoal(root / "shoal", containerd)
    stack.callback(shoal.stop)
    # The worker's task namespaces (if any) go with the host namespaces.
    hosts.node_ids.append(shoal.start())

    expected = build_image()["manifest_digest"].decode()
    digests = {"Swarm": swarm.load(docker_ref), "Shoal": shoal.load(shoal_ref)}
    swarm.create("warmup", 1)
    swarm.remove("warmup")
    assert set(digests.values()) == {expected}, f"image digests differ: {digests}, {expected}"
    print(
        f"image {expected[:19]}... loaded into both (Swarm {docker_ref}, Shoal {shoal_ref})",
        flush=True,
    )

    n, m = args.replicas, args.scale_to
    systems: list[System] = [shoal, swarm]
    times: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k in STEPS} for s in systems}
    delays: dict[str, float] = {}
    timelines: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for r in range(args.rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            service = f"bench{r}"
            got = {"create": system.create(service, n)}
            timelines[system.name].append(system.timeline(service))
            got["scale"] = system.scale(service, m)
            delays[system.name] = system.restart_delay_s(service)
            got["replace"] = system.replace(service, m)
            got["remove"] = system.remove(service)
            for k, v in got.items():
                times[system.name][k].append(v)
            print(
                f"round {r + 1}/{args.rounds} {system.name:5}: "
                + "  ".join(f"{k} {v:.2f}s" for k, v in got.items()),
                flush=True,
            )
            time.sleep(1)  # let the removed service's last work settle before the other side
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "loadavg_at_end": os.getloadavg(),
            "note": "shared machine, other engineers' tests running: noisy",
        },
        "versions": {
            "docker": swarm.version(),
            "containerd": sh(["containerd", "--version"]).split()[2],
            "shoal": shoal.version(),
        },
        "config": {
            "rounds": args.rounds,
            "replicas": n,
            "scale_to": m,
            "command": COMMAND,
            "swarm_poll_interval_s": POLL_S,
            "restart_delay_s": delays,
            "shoal_restart_note": "a slot's first restart is immediate, then 250 ms doubling "
            "up to the delay",
            "image_digest": expected,
        },
        "times_s": times,
        # Per round, from the systems' own task records: seconds after the service was
        # created until its last task was created, its first and its last task ran.
        "create_timeline_s": timelines,
    }


def summarise(result: dict[str, Any]) -> str:
    times = result["times_s"]
    cfg = result["config"]
    n, m = cfg["replicas"], cfg["scale_to"]
    label = {
        "create": f"create {n} replicas -> {n}/{n} running",
        "scale": f"scale {n} -> {m} -> {m}/{m} running",
        "replace": "container SIGKILLed -> replacement running",
        "remove": "service rm -> all containers gone",
    }
    medians: dict[str, dict[str, float]] = {"Shoal": {}, "Swarm": {}}
    ratios: dict[str, float] = {}
    lines = [
        "| step | Shoal | Swarm | Shoal/Swarm | goal |",
        "|---|---|---|---|---|",
    ]
    for step in STEPS:
        s = statistics.median(times["Shoal"][step])
        w = statistics.median(times["Swarm"][step])
        medians["Shoal"][step], medians["Swarm"][step] = s, w
        ratios[step] = s / w
        goal = GOALS.get(step)
        verdict = "-" if goal is None else f"<= {goal}x " + ("met" if s / w <= goal else "MISSED")
        lines.append(f"| {label[step]} | {s:.2f} s | {w:.2f} s | {s / w:.2f}x | {verdict} |")
    lines.append("")
    for name, rounds in result["create_timeline_s"].items():
        tl = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        lines.append(
            f"{name} create, from its own task records (medians): last task created "
            f"+{tl['tasks_created']:.2f} s, first running +{tl['first_running']:.2f} s, "
            f"last running +{tl['last_running']:.2f} s"
        )
    delays = cfg["restart_delay_s"]
    lines.append(
        f"restart delay (defaults, read back from the services): Swarm {delays['Swarm']:g} s; "
        f"Shoal {delays['Shoal']:g} s ({cfg['shoal_restart_note']})"
    )
    lines.append(
        f"medians of {cfg['rounds']} rounds; Docker {result['versions']['docker']}, "
        f"containerd {result['versions']['containerd']}, Shoal {result['versions']['shoal']}"
    )
    result["medians_s"] = medians
    result["ratios"] = ratios
    result["goals"] = GOALS
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replicas", type=int, default=20, help="replicas created (N)")
    p.add_argument("--scale-to", type=int, default=40, help="replicas after the scale (M)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "vs_swarm" / "results.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (dockerd, containerd, network namespaces)")
    ensure_docker()
    existed = {q for q in DOCKERD_SIDE_PATHS if q.exists()}
    root = Path(tempfile.mkdtemp(prefix="shoal-vs-swarm-", dir="/var/tmp"))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(_remove_new, DOCKERD_SIDE_PATHS, existed)
        try:
            result = run_bench(args, root, stack)
        finally:
            _ignore_signals()
    table = summarise(result)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    left = [*mounts_under(root), *map(str, processes_mentioning(root))]
    if left or root.exists():
        print(f"WARNING: left behind under {root}: {left}")


if __name__ == "__main__":
    main()
