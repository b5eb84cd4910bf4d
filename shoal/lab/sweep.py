"""Finding what a lab run left behind, from /proc: processes by command line, by network
namespace or by parent, and mounts under a directory. Used by `shoal-lab down`, the
private containerd's stop() and the benchmarks' clean-up checks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def processes_mentioning(*needles: str) -> list[int]:
    """Processes whose command line contains any of the strings (not this process)."""
    out = []
    wanted = [n.encode() for n in needles]
    for pid in _pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if any(n in cmd for n in wanted):
                out.append(pid)
    return out


def processes_in_netns(inodes: set[int]) -> list[int]:
    """Processes whose network namespace is one of these (by the namespace's inode)."""
    out = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                out.append(pid)
    return out


def children(parents: list[int]) -> list[int]:
    out = []
    for pid in _pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) in parents:
                out.append(pid)
    return out


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below the roots, deepest first (the order to unmount them)."""
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == str(r) or target.startswith(f"{r}/") for r in roots):
            out.append(target)
    return sorted(out, key=len, reverse=True)
