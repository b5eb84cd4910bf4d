"""An etcd server on a netns host, for a manager given `--etcd-endpoints`.

It listens on the host's own loopback (fixed ports: the namespace is private), keeps
its data in `data_dir`, and can be stopped and started again with that data: an
etcd outage a test controls. `Hosts.close()` kills it with the host's other processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from shoal.lab.hosts import Host
from shoal.lab.procs import terminate

CLIENT_PORT = 2379
PEER_PORT = 2380


class HostEtcd:
    def __init__(self, host: Host, data_dir: Path, addr: str = "127.0.0.1") -> None:
        self.host = host
        # The host's loopback by default; its underlay address for managers on other hosts.
        self.addr = addr
        self.dir = data_dir
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """As the host's processes reach it (`--etcd-endpoints`)."""
        return f"http://{self.addr}:{CLIENT_PORT}"

    def start(self, timeout: float = 30) -> HostEtcd:
        self.dir.mkdir(parents=True, exist_ok=True)
        client, peer = self.endpoint, f"http://{self.addr}:{PEER_PORT}"
        # nsenter execs etcd: the process is etcd itself, so a signal reaches it directly.
        self.proc = self.host.spawn(
            [
                self.binary,
                "--name", "shoal",
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"shoal={peer}",
            ],
            self.dir / "etcd.log",
        )  # fmt: skip
        probe = f"import socket; socket.create_connection(('{self.addr}', {CLIENT_PORT}), 1)"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}:\n{self.log()}")
            if self.host.run(sys.executable, "-c", probe, check=False).returncode == 0:
                return self
            time.sleep(0.1)  # start-up only
        raise RuntimeError(f"etcd did not listen within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (etcd's clean shutdown), SIGKILL if it does not go."""
        if self.proc is not None:
            terminate(self.proc, timeout=15)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        path = self.dir / "etcd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
