"""The embedded etcd: Debian's `etcd` binary run as a child of the manager.

It listens on loopback only and speaks TLS only: clients (and its own peer
port) must show a certificate from the embedded etcd's own CA (etcd_tls.py),
which only the manager holds. Its ports are picked once and kept in the state dir so
a restarted manager finds its data under the same member URLs. The child gets
SIGKILL if the manager dies (`setpriv --pdeathsig`), and a leftover from a killed
manager is found by its pid file and stopped before a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from shoal.manager.etcd_tls import EtcdCredentials, ensure_credentials
from shoal.manager.store.etcd import EtcdTLS

log = logging.getLogger(__name__)

INSTALL_HINT = "etcd not found: install it with `apt-get install etcd-server` (Debian/Ubuntu)"


class EtcdError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The child is to die with the manager. Not with a preexec_fn: that forces a
# plain fork(), and a fork of a process running gRPC threads can abort in the
# child; util-linux's setpriv sets the death signal and execs etcd instead.
SETPRIV = shutil.which("setpriv")


class EmbeddedEtcd:
    def __init__(self, state_dir: Path, binary: str | None = None) -> None:
        self.dir = state_dir / "etcd"
        self.binary = binary or shutil.which("etcd") or ""
        self.process: subprocess.Popen[bytes] | None = None
        self.client_port = 0
        self.peer_port = 0
        self.creds: EtcdCredentials | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    @property
    def tls(self) -> EtcdTLS:
        """What a client needs to talk to this etcd (only after start())."""
        if self.creds is None:
            raise EtcdError("embedded etcd not started")
        return EtcdTLS(self.creds.ca, self.creds.client_cert, self.creds.client_key)

    def manager_args(self) -> list[str]:
        """`swarmd manager` flags that use this etcd as an external one."""
        tls = self.tls
        return [
            "--etcd-endpoints",
            self.url,
            "--etcd-cacert",
            str(tls.ca_file),
            "--etcd-cert",
            str(tls.cert_file),
            "--etcd-key",
            str(tls.key_file),
        ]

    def _ports(self) -> tuple[int, int]:
        conf = self.dir / "ports.json"
        if conf.exists():
            saved = json.loads(conf.read_text())
            return int(saved["client"]), int(saved["peer"])
        ports = free_port(), free_port()
        conf.write_text(json.dumps({"client": ports[0], "peer": ports[1]}))
        return ports

    def _stop_leftover(self) -> None:
        pid_file = self.dir / "etcd.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"etcd" in cmdline and str(self.dir).encode() in cmdline:
                log.warning("stopping etcd %d left over from an earlier manager", pid)
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.02)
        pid_file.unlink(missing_ok=True)

    async def start(self, timeout_s: float = 30.0) -> None:
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise EtcdError(INSTALL_HINT)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stop_leftover()
        self.client_port, self.peer_port = self._ports()
        self.creds = creds = ensure_credentials(self.dir / "pki")
        client = f"https://127.0.0.1:{self.client_port}"
        peer = f"https://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name",
            "shoal",
            "--data-dir",
            str(self.dir / "data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"shoal={peer}",
            "--initial-cluster-state",
            "new",
            "--cert-file",
            str(creds.server_cert),
            "--key-file",
            str(creds.server_key),
            "--trusted-ca-file",
            str(creds.ca),
            "--client-cert-auth",
            "--peer-cert-file",
            str(creds.server_cert),
            "--peer-key-file",
            str(creds.server_key),
            "--peer-trusted-ca-file",
            str(creds.ca),
            "--peer-client-cert-auth",
            # Keep history bounded; watchers re-list if they fall behind.
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "100000",
            "--quota-backend-bytes",
            str(4 * 1024**3),
            "--max-txn-ops",
            "1024",
            "--logger",
            "zap",
            "--log-outputs",
            str(self.dir / "etcd.log"),
        ]
        self.process = self._spawn(args)
        (self.dir / "etcd.pid").write_text(str(self.process.pid))
        await self._wait_ready(timeout_s)

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        if SETPRIV:
            args = [SETPRIV, "--pdeathsig", "KILL", "--", *args]
        with open(self.dir / "etcd.stderr", "ab") as stderr:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    async def _wait_ready(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = (self.dir / "etcd.stderr").read_text(errors="replace")[-2000:]
                raise EtcdError(f"etcd exited with {self.process.returncode}: {tail.strip()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.client_port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise EtcdError(f"etcd did not start listening on {self.endpoint} within {timeout_s}s")

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        (self.dir / "etcd.pid").unlink(missing_ok=True)
