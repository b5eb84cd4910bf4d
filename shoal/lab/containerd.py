"""A private containerd for tests and the demo: its own root, state and socket.

Tests never touch a system containerd. `stop()` kills the shims it started
(found by their -address argument), unmounts whatever is left under its
directories, and removes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

BINARY = "/usr/bin/containerd"


def _mounts_under(*roots: Path) -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target.startswith(str(r)) for r in roots):
            out.append(target)
    return sorted(out, key=len, reverse=True)


def _children(parents: list[int]) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid in parents:
                    out.append(int(d.name))
    return out


class Containerd:
    def __init__(self, base: Path | None = None) -> None:
        # Short paths: unix sockets and shim state live here (108-byte socket path limit).
        self.run = Path(f"/run/shoal-ctd-{uuid.uuid4().hex[:8]}")
        self.root = (base or Path("/var/lib")) / f"shoal-ctd-root-{self.run.name[-8:]}"
        self.socket = self.run / "containerd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Containerd:
        self.run.mkdir(parents=True)
        self.root.mkdir(parents=True)
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
        self.proc = subprocess.Popen(
            [BINARY, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.run / "containerd.log", "wb"),
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "containerd did not start: " + (self.run / "containerd.log").read_text()[-2000:]
                )
            time.sleep(0.05)
        return self

    def shims(self) -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes()
                if b"containerd-shim" in cmd and str(self.socket).encode() in cmd:
                    pids.append(int(d.name))
        return pids

    def stop(self) -> None:
        shims = self.shims()
        # Container processes first (children of the shims), then the shims.
        for pid in [*_children(shims), *shims]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for target in _mounts_under(self.run, self.root):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.run, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
