"""A Shoal cluster on netns hosts: a manager (embedded etcd) on h0, agents on the others."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb
from shoal.lab.hosts import Host, Hosts

MANAGER_PORT = 4242


class Cluster:
    def __init__(self, hosts: Hosts, state_root: Path) -> None:
        self.hosts = hosts
        self.root = state_root
        self.manager_host = hosts[0]
        self.manager_dir = state_root / "manager"
        self.workers: dict[str, Host] = {}

    @property
    def socket(self) -> Path:
        return self.manager_dir / "control.sock"

    @property
    def manager_addr(self) -> str:
        return f"{self.manager_host.addr}:{MANAGER_PORT}"

    def control(self) -> api_grpc.ControlStub:
        return api_grpc.ControlStub(grpc.insecure_channel(f"unix://{self.socket}"))

    def start_manager(self, *extra: str) -> None:
        h = self.manager_host
        h.spawn(
            [
                sys.executable,
                "-m",
                "shoal.daemon",
                "manager",
                "--state-dir",
                str(self.manager_dir),
                "--listen-addr",
                self.manager_addr,
                "--advertise-addr",
                h.addr,
                *extra,
            ],
            self.root / "manager.log",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket.exists():
                try:
                    self.control().GetCluster(api.GetClusterRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)  # start-up only
        raise RuntimeError("manager did not start:\n" + self.log("manager"))

    def start_worker(self, host: Host, *extra: str, token: str | None = None) -> str:
        if token is None:
            token = self.control().GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
        state = self.root / host.name
        args = [
            sys.executable,
            "-m",
            "shoal.daemon",
            "worker",
            "--state-dir",
            str(state),
            "--join-addr",
            self.manager_addr,
            "--hostname",
            host.name,
            "--advertise-addr",
            host.addr,
            *extra,
        ]
        if not (state / "node_id").exists():
            args += ["--join-token", token]
        host.spawn(args, self.root / f"{host.name}.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (state / "node_id").exists():
                node_id = (state / "node_id").read_text().strip()
                self.hosts.node_ids.append(node_id)
                if self.node_ready(node_id):
                    self.workers[node_id] = host
                    return node_id
            time.sleep(0.05)  # start-up only
        raise RuntimeError(f"worker {host.name} did not come up:\n" + self.log(host.name))

    def node_ready(self, node_id: str) -> bool:
        try:
            node = self.control().GetNode(api.GetNodeRequest(ref=node_id)).node
        except grpc.RpcError:
            return False
        return node.status.state == pb.NODE_READY

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def wait_running(self, service: str, count: int, timeout: float = 60) -> list[pb.Task]:
        """Blocks on WatchService until `count` tasks run; returns them."""
        stream = self.control().WatchService(api.WatchServiceRequest(ref=service), timeout=timeout)
        try:
            for progress in stream:
                info = progress.service
                if info.running == count and info.desired == count:
                    break
        finally:
            stream.cancel()
        tasks = self.control().ListTasks(api.ListTasksRequest(service_ref=service)).tasks
        return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]
