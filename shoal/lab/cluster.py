"""A Shoal cluster on netns hosts: a manager (embedded etcd) on h0, agents on the others.

Daemons start with the command lines of the systemd units (shoal.lab.units), the join
token read from a file as on a real host.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from shoal.lab.hosts import Host, Hosts
from shoal.lab.procs import answers, control, registered_at
from shoal.lab.units import command_line
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

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
        return control(self.socket)

    def manager_argv(self, *extra: str) -> list[str]:
        return command_line(
            "manager",
            {
                "SHOAL_STATE_DIR": str(self.manager_dir),
                "SHOAL_LISTEN_ADDR": self.manager_addr,
                "SHOAL_ADVERTISE_ADDR": self.manager_host.addr,
                "SHOAL_MANAGER_ARGS": " ".join(extra),
            },
        )

    def start_manager(self, *extra: str) -> int:
        """Starts the manager on h0 and waits until it answers; returns its pid."""
        proc = self.manager_host.spawn(self.manager_argv(*extra), self.root / "manager.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if answers(self.socket):
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.05)  # start-up only
        raise RuntimeError("manager did not start:\n" + self.log("manager"))

    def token_file(self) -> Path:
        """The worker join token, in a file (mode 0600) as the worker unit reads it."""
        path = self.root / "join-token"
        if not path.exists():
            token = self.control().GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
            path.touch(mode=0o600)
            path.write_text(token + "\n")
        return path

    def worker_argv(self, host: Host, *extra: str, token_file: Path | None = None) -> list[str]:
        return command_line(
            "worker",
            {
                "SHOAL_STATE_DIR": str(self.root / host.name),
                "SHOAL_JOIN_ADDR": self.manager_addr,
                "SHOAL_JOIN_TOKEN_FILE": str(token_file or self.token_file()),
                "SHOAL_ADVERTISE_ADDR": host.addr,
                "SHOAL_WORKER_ARGS": " ".join(["--hostname", host.name, *extra]),
            },
        )

    def start_worker(self, host: Host, *extra: str, token_file: Path | None = None) -> str:
        """Starts an agent on host and waits until its node is ready; returns the node id."""
        state = self.root / host.name
        before = 0
        if (state / "node_id").exists():
            # A restart: up once the manager saw a registration newer than the last.
            before = registered_at(self.socket, (state / "node_id").read_text().strip())
        proc = host.spawn(
            self.worker_argv(host, *extra, token_file=token_file), self.root / f"{host.name}.log"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            path = state / "node_id"
            node_id = path.read_text().strip() if path.exists() else ""
            if node_id:
                if node_id not in self.hosts.node_ids:
                    self.hosts.node_ids.append(node_id)
                if registered_at(self.socket, node_id) > before:
                    self.workers[node_id] = host
                    return node_id
            time.sleep(0.05)  # start-up only
        raise RuntimeError(f"worker {host.name} did not come up:\n" + self.log(host.name))

    def node_ready(self, node_id: str) -> bool:
        try:
            node = self.control().GetNode(api.GetNodeRequest(ref=node_id)).node
        except grpc.RpcError:
            return False
        return bool(node.status.state == pb.NODE_READY)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def wait_running(self, service: str, count: int, timeout: float = 60) -> list[pb.Task]:
        return wait_running(self.control(), service, count, timeout)


def wait_running(
    stub: api_grpc.ControlStub,
    service: str,
    count: int,
    timeout: float = 60,
    update_state: int | None = None,
) -> list[pb.Task]:
    """Blocks on WatchService until `count` tasks of the service run (and its rolling
    update reached `update_state`, if given); returns the running tasks."""
    stream = stub.WatchService(api.WatchServiceRequest(ref=service), timeout=timeout)
    try:
        for progress in stream:
            info = progress.service
            if (
                info.running == count
                and info.desired == count
                and (update_state is None or info.service.update_status.state == update_state)
            ):
                break
        else:
            raise AssertionError(f"watch of {service} ended before {count} tasks ran")
    finally:
        stream.cancel()
    tasks = stub.ListTasks(api.ListTasksRequest(service_ref=service)).tasks
    return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]
