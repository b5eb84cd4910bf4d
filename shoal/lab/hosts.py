"""Several "hosts" on one machine: network namespaces on a private underlay bridge.

Each run gets a unique prefix; the underlay bridge lives in a namespace of
its own, and every host namespace has one veth into it. Nothing is added to
the root namespace. Processes run in a host with `nsenter --net` (not `ip
netns exec`), so they share the root mount namespace: task namespaces they
bind-mount under /var/run/netns and the containerd socket stay visible.
`Hosts.close()` stops what it started and deletes every namespace it made,
including the task namespaces of its agents (`shoal-<node id>-...`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shoal.lab.procs import spawn, terminate

NETNS_DIR = Path("/var/run/netns")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    name: str
    netns: str
    addr: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", *argv]

    def run(
        self, *argv: str, timeout: float = 60, check: bool = True, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(*argv), capture_output=True, text=True, timeout=timeout, check=check, cwd=cwd
        )

    def spawn(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = spawn(self.cmd(*argv), log, env)
        self.procs.append(proc)
        return proc


class Hosts:
    def __init__(
        self,
        count: int,
        prefix: str | None = None,
        mtu: int = 1500,
        names: list[str] | None = None,
    ) -> None:
        self.prefix = prefix or f"sh{uuid.uuid4().hex[:6]}"
        self.underlay = f"{self.prefix}-ul"
        # A random private /24 for the underlay; it exists only inside our namespaces.
        self.subnet = f"172.29.{random.randint(1, 254)}"
        self.hosts: list[Host] = []
        self.node_ids: list[str] = []
        self.mtu = mtu
        self.names = names or [f"h{i}" for i in range(count)]
        try:
            self._build(count)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int) -> None:
        _ip("netns", "add", self.underlay)
        _ip("-n", self.underlay, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.underlay, "link", "set", "br0", "up")
        for i in range(count):
            name = self.names[i]
            ns = f"{self.prefix}-{name}"
            addr = f"{self.subnet}.{10 + i}"
            _ip("netns", "add", ns)
            self.hosts.append(Host(name, ns, addr))
            # Create the pair inside the underlay namespace, then move one end out.
            _ip(
                "-n",
                self.underlay,
                "link",
                "add",
                f"p{i}",
                "mtu",
                str(self.mtu),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", self.underlay, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "link", "set", "eth0", "mtu", str(self.mtu), "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def close(self) -> None:
        procs = [p for host in self.hosts for p in host.procs if p.poll() is None]
        # SIGTERM to all first, so they shut down in parallel, then wait for each.
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            terminate(proc, group=True)
        mine = [f"shoal-{n[:10]}-" for n in self.node_ids]
        for name in sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else []:
            if name.startswith(self.prefix + "-") or any(name.startswith(m) for m in mine):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
        # Namespaces go away once nothing holds them; give the kernel a moment.
        time.sleep(0.05)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
