"""The Shoal side: a manager (embedded etcd) and one worker on a private containerd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc

from bench.vs_swarm.common import (
    COMMAND,
    LIMIT_S,
    REPO,
    SWARMCTL,
    sh,
    task_timeline,
    until,
)
from shoal.lab.containerd import Containerd
from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb


def stored_as(ref: str, image: str) -> bool:
    """Whether containerd's image `ref` is `image`: the manager pins a tag to its
    digest at create (as Docker does), so the agent pulls REPO@sha256:..."""
    return ref == image or ref.startswith(image.rsplit(":", 1)[0] + "@sha256:")


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
    def socket(self) -> Path:
        """The manager's control socket."""
        assert self.manager is not None
        return self.manager.socket

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SWARM_SOCKET": str(self.socket)}

    def ctl(self, *args: str, check: bool = True) -> str:
        cli = [str(SWARMCTL)] if SWARMCTL.exists() else [sys.executable, "-m", "shoal.swarmctl"]
        return sh([*cli, *args], env=self.env, check=check, timeout=LIMIT_S + 30)

    def ctr(self, *args: str) -> str:
        assert self.worker is not None
        ns = f"shoal-{self.worker.node_id}"
        return sh(["ctr", "-a", str(self.containerd.socket), "-n", ns, *args])

    def control(self) -> tuple[grpc.Channel, api_grpc.ControlStub]:
        channel = grpc.insecure_channel(f"unix://{self.socket}")
        return channel, api_grpc.ControlStub(channel)

    def load(self, image: str) -> str:
        """Runs a one-replica warm-up service (the agent pulls the image); returns the
        image's manifest digest as containerd stored it."""
        self.image = image
        self.create("warmup", 1)
        self.remove("warmup")
        for line in self.ctr("images", "ls").splitlines()[1:]:
            ref, _, digest, *_ = line.split()
            if stored_as(ref, image):
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

    def timeline(self, service: str, since: float | str = "created") -> dict[str, float]:
        """As Swarm.timeline, from the manager's records."""
        channel, stub = self.control()
        try:
            svc = stub.GetService(api.GetServiceRequest(ref=service), timeout=10).service
            got = stub.ListTasks(api.ListTasksRequest(service_ref=service), timeout=10).tasks
        finally:
            channel.close()
        meta = svc.service.meta
        stamp = meta.created_at_ms if since == "created" else meta.updated_at_ms
        start = since if isinstance(since, float) else stamp / 1000
        return task_timeline(
            start,
            [
                (
                    t.meta.created_at_ms / 1000,
                    t.status.timestamp_ms / 1000 if t.status.state == pb.RUNNING else None,
                )
                for t in got
                if t.desired_state == pb.RUNNING
            ],
        )

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
