"""Real daemon processes (`swarmd manager`, `swarmd worker`, `swarmctl` runs) and the
helpers every user of the lab shares: a control client, polling waits, and stopping a
process SIGTERM-then-SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

START_TIMEOUT_S = 30.0


class HasSocket(Protocol):
    @property
    def socket(self) -> Path: ...


def control(target: Path | HasSocket) -> api_grpc.ControlStub:
    """A Control API client on a manager's unix socket (a path, or anything with .socket)."""
    sock = target if isinstance(target, Path) else target.socket
    return api_grpc.ControlStub(grpc.insecure_channel(f"unix://{sock}"))


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> float:
    """Polls check() until it is true; returns the seconds it took. For conditions the
    API has no watch for (node state, containerd, files)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(every)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20, group: bool = False) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit code.
    group: signal the process group (a process started with start_new_session)."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait()
    return proc.returncode


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A daemon with its output appended to `log`, in a session of its own: it outlives
    the command that started it (`shoal-lab up`) and a terminal's signals."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def alive(pid: int) -> bool:
    """Running and not a zombie (a detached daemon is reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def terminate_pid(pid: int, timeout: float = 20) -> None:
    """terminate() for a process that is not our child (a detached lab daemon)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class DaemonProcess:
    """A swarmd process a test started: crash it, or stop it cleanly."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """kill -9, no clean-up: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        return 0 if self.proc is None else terminate(self.proc)


class ManagerProcess(DaemonProcess):
    def __init__(self, state_dir: Path, *extra: str) -> None:
        self.state_dir = state_dir
        self.extra = list(extra)
        if "--listen-addr" not in self.extra:
            self.extra += ["--listen-addr", free_manager_addr()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"{state_dir.name}.log"

    @property
    def socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def addr(self) -> str:
        """The manager's mTLS address (HOST:PORT), for agents and joining managers."""
        return self.extra[self.extra.index("--listen-addr") + 1]

    @property
    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def start(self) -> ManagerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal.daemon",
                "--log-level",
                "debug",
                "manager",
                "--state-dir",
                str(self.state_dir),
                "--leader-lease-ttl",
                "3",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"manager exited {self.proc.returncode}:\n{self.log_tail()}")
            if answers(self.socket):
                return
            time.sleep(0.05)  # start-up only: nothing to watch before the socket exists
        raise RuntimeError(f"manager not ready in {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def ctl(self, *args: str, timeout: float = 60) -> Result:
        return swarmctl(self.socket, *args, timeout=timeout)

    def control(self) -> api_grpc.ControlStub:
        return control(self.socket)


def answers(socket: Path) -> bool:
    """The manager on this control socket is up and answers GetCluster."""
    if not socket.exists():
        return False
    try:
        with grpc.insecure_channel(f"unix://{socket}") as ch:
            api_grpc.ControlStub(ch).GetCluster(api.GetClusterRequest(), timeout=2)
        return True
    except grpc.RpcError:
        return False


def swarmctl(socket: Path, *args: str, timeout: float = 60) -> Result:
    env = {**os.environ, "SWARM_SOCKET": str(socket)}
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.swarmctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def free_manager_addr() -> str:
    """A loopback HOST:PORT for a manager: it also listens on PORT+1 (joins), so both
    must be free."""
    import socket

    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return f"127.0.0.1:{port}"
    raise RuntimeError("no two consecutive free ports on loopback")


class WorkerProcess(DaemonProcess):
    def __init__(self, state_dir: Path, join_addr: str, token: str, *extra: str) -> None:
        self.state_dir = state_dir
        self.join_addr = join_addr
        self.token = token
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"{state_dir.name}.log"

    @property
    def node_id(self) -> str:
        return (self.state_dir / "node_id").read_text().strip()

    def start(self, wait_joined: bool = True, control_socket: Path | None = None) -> WorkerProcess:
        """Starts the agent; with wait_joined, returns once it has joined and, given the
        manager's control socket, once the manager recorded a session newer than any
        before this start (what a restart test must wait for: the node_id file of a
        restarted agent exists before its new process did anything)."""
        restart = (self.state_dir / "node_id").exists()
        if wait_joined and restart and control_socket is None:
            raise ValueError("a restarted agent is only up once it registered: pass control_socket")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        before = registered_at(control_socket, self.node_id) if restart and control_socket else 0
        args = [
            sys.executable,
            "-m",
            "shoal.daemon",
            "--log-level",
            "debug",
            "worker",
            "--state-dir",
            str(self.state_dir),
            "--join-addr",
            self.join_addr,
            *self.extra,
        ]
        if self.token:
            args += ["--join-token", self.token]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )
        if not wait_joined:
            return self
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._registered(control_socket, before):
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not register in time:\n{self.log_tail()}")
            time.sleep(0.05)  # start-up only; the API has no node watch
        return self

    def _registered(self, control_socket: Path | None, before: int) -> bool:
        path = self.state_dir / "node_id"
        node_id = path.read_text().strip() if path.exists() else ""
        if not node_id:  # not joined yet (or the file is being written)
            return False
        return control_socket is None or registered_at(control_socket, node_id) > before

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:]


def registered_at(control_socket: Path, node_id: str) -> int:
    """When the node's current session registered (manager clock, ms), 0 unless it is
    ready: the dispatcher stamps heartbeat_at_ms on every registration, and only then."""
    with grpc.insecure_channel(f"unix://{control_socket}") as ch:
        try:
            stub = api_grpc.ControlStub(ch)
            node = stub.GetNode(api.GetNodeRequest(ref=node_id), timeout=10).node
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
    return node.status.heartbeat_at_ms if node.status.state == pb.NODE_READY else 0
