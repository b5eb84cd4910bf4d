"""Debian's docker-registry (distribution v2) on a loopback port, storage in a temp dir."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from shoal.lab.procs import spawn, terminate
from shoal.manager.etcd_embedded import free_port

BINARY = "/usr/bin/docker-registry"


class Registry:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        wrap: list[str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        # wrap: a command prefix, e.g. nsenter into a host namespace.
        self.wrap = wrap or []
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="shoal-registry-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Registry:
        config = self.dir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n"
        )
        self.proc = spawn([*self.wrap, BINARY, "serve", str(config)], self.dir / "registry.log")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "registry exited: " + (self.dir / "registry.log").read_text()[-2000:]
                )
            if not self.wrap and self._up():
                return self
            if self.wrap and "listening on" in (self.dir / "registry.log").read_text():
                return self
            time.sleep(0.05)
        raise RuntimeError("registry did not start")

    def _up(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=1).close()
            return True
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
