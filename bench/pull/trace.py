"""The agent's pull alone, traced: bench/pull's image through the agent's image store
into a fresh containerd per round, with per-layer timings and CPU-seconds.

    python -m bench.pull.trace [--rounds 2] [--unpacks N] [--sides parallel serial ctr]

Prints each layer's apply ("aside": the parallel path's temporary snapshot, "in
place": on its parent) and chaining times from the pull's start, then per round the
pull's wall time, containerd's CPU-seconds (from /proc) and the agent's own. The
sides alternate within each round: `parallel` (the agent's pull), `serial` (its
serial path: every layer applied on its parent, in order, as for a snapshotter other
than overlayfs), `ctr` (`ctr image pull`); medians at the end. --unpacks sets how
many layers apply at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.pull.image import build
from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.registry import Registry
from shoal.worker.runtime import unpack
from shoal.worker.runtime.containerd import ContainerdRuntime

START = [time.monotonic()]


class Since(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.monotonic() - START[0]:6.2f} s  {record.getMessage()}"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pull(socket: str, image: str, state: Path) -> float:
    rt = ContainerdRuntime(socket, f"trace-{uuid.uuid4().hex[:8]}", state)
    try:
        START[0] = time.monotonic()
        await rt.pull(image)
        return time.monotonic() - START[0]
    finally:
        await rt.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--unpacks", type=int, default=unpack.UNPACKS)
    p.add_argument("--sides", nargs="+", default=["parallel", "serial", "ctr"])
    args = p.parse_args()
    unpack.UNPACKS = args.unpacks
    handler = logging.StreamHandler()
    handler.setFormatter(Since())
    for name in ("shoal.worker.runtime.unpack", "shoal.worker.runtime.images"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    blobs, _ = build()
    times: dict[str, list[float]] = {side: [] for side in args.sides}
    with Registry() as reg, tempfile.TemporaryDirectory(prefix="shoal-trace-") as state:
        image = push_image(reg.addr, "pull/host", "v1", blobs)
        for r in range(args.rounds):
            for side in args.sides[r % len(args.sides) :] + args.sides[: r % len(args.sides)]:
                unpack.OVERLAYFS = "overlayfs" if side == "parallel" else "(none: serial)"
                with Containerd() as ctd:
                    assert ctd.proc is not None
                    ctd0, me0 = cpu_s(ctd.proc.pid), cpu_s(os.getpid())
                    if side == "ctr":
                        took = ctr_pull(ctd, image)
                    else:
                        took = asyncio.run(pull(str(ctd.socket), image, Path(state)))
                    times[side].append(took)
                    print(
                        f"round {r + 1} {side}: {took:.2f} s, "
                        f"containerd {cpu_s(ctd.proc.pid) - ctd0:.2f} CPU-s, "
                        f"agent {cpu_s(os.getpid()) - me0:.2f} CPU-s, "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    for side, v in times.items():
        print(f"{side}: median {statistics.median(v):.2f} s ({', '.join(f'{x:.2f}' for x in v)})")


def ctr_pull(ctd: Containerd, image: str) -> float:
    ctr = ["ctr", "-a", str(ctd.socket), "-n", f"trace-{uuid.uuid4().hex[:8]}"]
    started = time.monotonic()
    subprocess.run([*ctr, "images", "pull", "--plain-http", image], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    return time.monotonic() - started


if __name__ == "__main__":
    main()
