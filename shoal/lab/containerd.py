"""A private containerd per lab host (and for tests): its own root, state and socket.

Tests never touch a system containerd. `stop()` kills the shims it started
(found by their -address argument), unmounts whatever is left under its
directories, and removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from shoal.lab.procs import spawn, terminate
from shoal.lab.sweep import children, mounts_under, processes_mentioning
from shoal.worker.runtime.containerd import ContainerdRuntime

BINARY = "/usr/bin/containerd"
RUNC_ROOT = Path("/run/containerd/runc")


class Containerd:
    def __init__(
        self,
        base: Path | None = None,
        run: Path | None = None,
        root: Path | None = None,
        wrap: list[str] | None = None,
    ) -> None:
        # Short paths: unix sockets and shim state live here (108-byte socket path limit).
        self.run = run or Path(f"/run/shoal-ctd-{uuid.uuid4().hex[:8]}")
        self.root = root or (base or Path("/var/lib")) / f"shoal-ctd-root-{self.run.name[-8:]}"
        self.socket = self.run / "containerd.sock"
        # wrap: a command prefix, e.g. nsenter into a host's network namespace.
        self.wrap = wrap or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Containerd:
        self.run.mkdir(parents=True)
        self.root.mkdir(parents=True)
        self._launch()
        return self

    def crash_and_restart(self, down_s: float = 0) -> None:
        """SIGKILL containerd alone (its shims and containers live on), start it again
        after down_s seconds."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        time.sleep(down_s)
        self.socket.unlink(missing_ok=True)
        self._launch()

    def _launch(self) -> None:
        config = self.run / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.root}"\n'
            f'state = "{self.run / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.run / "containerd.sock.ttrpc"}"\n'
            "[debug]\n"
            f'  address = "{self.run / "debug.sock"}"\n'
            '  level = "warn"\n'
        )
        log = self.run / "containerd.log"
        self.proc = spawn([*self.wrap, BINARY, "--config", str(config)], log)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("containerd did not start: " + log.read_text()[-2000:])
            time.sleep(0.05)

    def shims(self) -> list[int]:
        """The shims of this containerd: their -address argument is its socket."""
        pids = []
        for pid in processes_mentioning(str(self.socket)):
            with contextlib.suppress(OSError):
                if b"containerd-shim" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def namespaces(self) -> list[str]:
        out = subprocess.run(
            ["ctr", "-a", str(self.socket), "namespaces", "ls", "-q"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.split() if out.returncode == 0 else []

    def stop(self) -> None:
        # runc keeps its state under /run/containerd/runc/<namespace> whatever
        # containerd's own dirs: those of this containerd's namespaces go too.
        runc_state = [RUNC_ROOT / ns for ns in self.namespaces() if self.proc is not None]
        shims = self.shims()
        # Container processes first (children of the shims), then the shims.
        for pid in [*children(shims), *shims]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            terminate(self.proc, timeout=15)
        for target in mounts_under(self.run, self.root):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.run, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        for path in runc_state:
            shutil.rmtree(path, ignore_errors=True)

    def containers(self, node_id: str) -> dict[str, tuple[str, int]]:
        return containers(self.socket, node_id)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def containers(socket: Path, node_id: str) -> dict[str, tuple[str, int]]:
    """A node's containers in its containerd namespace: id -> (status, pid of PID 1),
    straight from containerd."""

    async def listed() -> dict[str, tuple[str, int]]:
        rt = ContainerdRuntime(str(socket), f"shoal-{node_id}")
        try:
            out = {}
            for cid in await rt.list():
                state = await rt.state(cid)
                if state is not None:
                    out[cid] = (state.status, state.pid)
            return out
        finally:
            await rt.close()

    return asyncio.run(listed())
