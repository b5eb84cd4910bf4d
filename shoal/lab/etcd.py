"""An etcd server on a netns host, for a manager given `--etcd-endpoints`.

It listens on the host's own loopback (fixed ports: the namespace is private), keeps
its data in `data_dir`, and can be stopped and started again with that data: an
etcd outage a test controls. `Hosts.close()` kills it with the host's other processes.

`etcd_cluster()` makes members on several hosts that form one cluster, TLS only with
client certificates as the embedded etcd (one CA of its own, shoal.manager.etcd_tls).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from shoal.lab.hosts import Host
from shoal.lab.procs import terminate
from shoal.manager.etcd_tls import EtcdCredentials, ensure_credentials

CLIENT_PORT = 2379
PEER_PORT = 2380


class HostEtcd:
    def __init__(
        self,
        host: Host,
        data_dir: Path,
        addr: str = "127.0.0.1",
        name: str = "shoal",
        cluster: dict[str, str] | None = None,
        tls: EtcdCredentials | None = None,
    ) -> None:
        self.host = host
        # The host's loopback by default; its underlay address for managers on other hosts.
        self.addr = addr
        self.dir = data_dir
        self.name = name
        self.tls = tls
        # Member name -> address of every member (this one alone by default).
        self.cluster = cluster or {name: addr}
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        """As the host's processes reach it (`--etcd-endpoints`)."""
        return f"{self.scheme}://{self.addr}:{CLIENT_PORT}"

    def client_args(self) -> list[str]:
        """`swarmd manager`'s flags for the client certificate (none without TLS)."""
        if self.tls is None:
            return []
        t = self.tls
        return [
            "--etcd-cacert", str(t.ca), "--etcd-cert", str(t.client_cert),
            "--etcd-key", str(t.client_key),
        ]  # fmt: skip

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        t = self.tls
        return [
            "--cert-file", str(t.server_cert), "--key-file", str(t.server_key),
            "--trusted-ca-file", str(t.ca), "--client-cert-auth",
            "--peer-cert-file", str(t.server_cert), "--peer-key-file", str(t.server_key),
            "--peer-trusted-ca-file", str(t.ca), "--peer-client-cert-auth",
        ]  # fmt: skip

    def start(self, timeout: float = 30, wait: bool = True) -> HostEtcd:
        """Starts (or restarts, on its data) the member; waits until it listens, unless a
        cluster's first members start (they listen only once a quorum is up)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        client, peer = self.endpoint, f"{self.scheme}://{self.addr}:{PEER_PORT}"
        initial = ",".join(f"{n}={self.scheme}://{a}:{PEER_PORT}" for n, a in self.cluster.items())
        # nsenter execs etcd: the process is etcd itself, so a signal reaches it directly.
        self.proc = self.host.spawn(
            [
                self.binary,
                "--name", self.name,
                "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial,
                *self._tls_args(),
            ],
            self.dir / "etcd.log",
        )  # fmt: skip
        if wait:
            self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float = 30) -> None:
        assert self.proc is not None
        probe = f"import socket; socket.create_connection(('{self.addr}', {CLIENT_PORT}), 1)"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}:\n{self.log()}")
            if self.host.run(sys.executable, "-c", probe, check=False).returncode == 0:
                return
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


def etcd_cluster(hosts: list[Host], root: Path) -> list[HostEtcd]:
    """One etcd member on each host's underlay address, forming one TLS cluster; started.
    The certificates (one CA, a server certificate naming every member's address, the
    managers' client certificate) are under root/pki."""
    tls = ensure_credentials(root / "pki", tuple(h.addr for h in hosts))
    names = {f"etcd-{h.name}": h.addr for h in hosts}
    members = [
        HostEtcd(h, root / name, addr, name=name, cluster=names, tls=tls)
        for h, (name, addr) in zip(hosts, names.items(), strict=True)
    ]
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_listening()
    return members
