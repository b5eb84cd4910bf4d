"""Real daemon processes for tests: `swarmd manager` and `swarmctl` runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc

START_TIMEOUT_S = 30.0


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
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
            if self.socket.exists():
                try:
                    with grpc.insecure_channel(f"unix://{self.socket}") as ch:
                        api_grpc.ControlStub(ch).GetCluster(api.GetClusterRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)  # start-up only: nothing to watch before the socket exists
        raise RuntimeError(f"manager not ready in {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def ctl(self, *args: str, timeout: float = 60) -> Result:
        return swarmctl(self.socket, *args, timeout=timeout)


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def start(self, wait_joined: bool = True) -> WorkerProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
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
        if wait_joined:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (self.state_dir / "node_id").exists():
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited {self.proc.returncode}:\n"
                        f"{self.log.read_text(errors='replace')[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("worker did not join in time")
                time.sleep(0.05)  # start-up only
        return self

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
