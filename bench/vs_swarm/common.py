"""Shared by both sides of the Shoal vs Docker Swarm benchmark: constants, shell, polling."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]
# Debian's docker.io CLI, the daemon's own version (another `docker` may come first in PATH).
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
SWARMCTL = Path(sys.executable).with_name("swarmctl")
POLL_S = 0.1
LIMIT_S = 180.0
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
STEPS = ("create", "scale", "replace", "remove")
# Issue 14 (create, scale); the first round's goal for a replacement.
GOALS = {"create": 0.5, "scale": 0.5, "replace": 0.2}
# Files and directories dockerd makes outside its data and exec roots; removed
# afterwards unless they were there before.
DOCKERD_SIDE_PATHS = (Path("/run/docker/plugins"), Path("/run/docker"))


def sh(
    argv: list[str], env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])}: {out.stderr.strip()[-2000:]}")
    return out.stdout


def until(check: Callable[[], bool], what: str, limit_s: float = LIMIT_S) -> float:
    """Polls `check` every POLL_S until it holds; returns time.perf_counter() then."""
    deadline = time.perf_counter() + limit_s
    while not check():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not in {limit_s:.0f}s: {what}")
        time.sleep(POLL_S)
    return time.perf_counter()


def ensure_docker() -> None:
    """Debian's docker.io, installed if missing (apt-get update only if apt knows no candidate).

    On a host run by systemd, its docker.service and docker.socket are masked for the
    install (until reboot at most, and unmasked after): the package would start the
    system dockerd, which adds docker0 and iptables rules to the host's own network."""
    if Path(DOCKERD).exists() and Path(DOCKER).exists():
        return
    print("installing Debian's docker.io ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    policy = sh(["apt-cache", "policy", "docker.io"], check=False)
    if "Candidate:" not in policy or "Candidate: (none)" in policy:
        subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    units = ["docker.service", "docker.socket"]
    systemd = Path("/run/systemd/system").is_dir()
    if systemd:
        subprocess.run(["systemctl", "mask", "--runtime", *units], capture_output=True)
    try:
        subprocess.run(
            [*apt, "install", "-y", "docker.io"], check=True, env=env, stdout=subprocess.DEVNULL
        )
    finally:
        if systemd:
            subprocess.run(["systemctl", "unmask", "--runtime", *units], capture_output=True)


class System(Protocol):
    name: str

    def create(self, service: str, n: int) -> float: ...
    def scale(self, service: str, n: int) -> float: ...
    def replace(self, service: str, n: int) -> float: ...
    def remove(self, service: str) -> float: ...
    def restart_delay_s(self, service: str) -> float: ...
    def timeline(self, service: str) -> dict[str, float]: ...


def parse_rfc3339(stamp: str) -> float:
    """RFC 3339 with up to nanoseconds (Docker's) -> seconds since the epoch."""
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp.strip())
    if m is None:
        raise ValueError(f"not a timestamp: {stamp!r}")
    whole = datetime.datetime.fromisoformat(m.group(1) + m.group(3).replace("Z", "+00:00"))
    return whole.timestamp() + float(m.group(2) or 0)


def raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def ignore_signals() -> None:
    """While cleaning up: a second Ctrl-C must not leave half the mess behind."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def remove_new(paths: tuple[Path, ...], existed: set[Path]) -> None:
    for p in paths:
        if p not in existed:
            with contextlib.suppress(OSError):
                p.rmdir()  # only if empty: never anything someone else put there


def task_timeline(since: float, tasks: list[tuple[float, float | None]]) -> dict[str, float]:
    """From tasks' own records (created, running since or None), those created at or
    after `since` (seconds since the epoch): seconds from `since` until the last of them
    was created, the first and the last of them ran."""
    # Records are in ms (Shoal) or from another clock reading (Docker): a little slack.
    new = [(c, r) for c, r in tasks if c >= since - 0.002]
    ran = [r for _, r in new if r is not None]
    if not new or not ran:
        raise RuntimeError(f"no task created and running since {since}")
    return {
        "tasks_created": max(c for c, _ in new) - since,
        "first_running": min(ran) - since,
        "last_running": max(ran) - since,
    }


def run_record(docker: str, shoal: str) -> dict[str, object]:
    """The date, machine and versions every result file starts with."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "loadavg_at_end": os.getloadavg(),
            "note": "shared machine, other engineers' work running: noisy",
        },
        "versions": {
            "docker": docker,
            "containerd": sh(["containerd", "--version"]).split()[2],
            "shoal": shoal,
        },
    }
