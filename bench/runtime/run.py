"""Container start cost: Shoal's containerd runtime against `ctr run -d`, same containerd.

    python -m bench.runtime.run [--count 10]

A private containerd and a local registry with the tiny busybox image; the
image is pulled once by each side first. Then, serially, N containers created
and started by Shoal's runtime (gRPC, the product path) and N by `ctr run -d`
(containerd's own CLI, the ANCHORS figure: ~180 ms each). Reports the median
per container and the ratio. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.guard import exit_cleanly_on_signals
from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.registry import Registry
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.containerd import ContainerdRuntime


async def shoal_side(ctd: Containerd, image: str, count: int, root: Path) -> list[float]:
    rt = ContainerdRuntime(str(ctd.socket), "bench-shoal", root)
    await rt.pull(image)
    times = []
    try:
        for i in range(count):
            t = time.perf_counter()
            await rt.create(
                ContainerConfig(
                    container_id=f"s{i}",
                    image=image,
                    command=["sleep", "60"],
                    log_path=root / f"s{i}.log",
                )
            )
            await rt.start(f"s{i}")
            times.append(time.perf_counter() - t)
    finally:
        for i in range(count):
            await rt.stop(f"s{i}", 0.1)
            await rt.remove(f"s{i}")
        await rt.close()
    return times


def ctr_side(ctd: Containerd, image: str, count: int) -> list[float]:
    ctr = ["ctr", "-a", str(ctd.socket), "-n", "bench-ctr"]
    subprocess.run([*ctr, "images", "pull", "--plain-http", image], check=True, capture_output=True)
    times = []
    try:
        for i in range(count):
            t = time.perf_counter()
            subprocess.run(
                [*ctr, "run", "-d", image, f"c{i}", "sleep", "60"], check=True, capture_output=True
            )
            times.append(time.perf_counter() - t)
    finally:
        for i in range(count):
            subprocess.run([*ctr, "task", "kill", "-s", "KILL", f"c{i}"], capture_output=True)
            time.sleep(0.05)
            subprocess.run([*ctr, "task", "rm", "-f", f"c{i}"], capture_output=True)
            subprocess.run([*ctr, "containers", "rm", f"c{i}"], capture_output=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args()
    exit_cleanly_on_signals()
    with Registry() as reg, Containerd() as ctd:
        image = push_image(reg.addr, "busybox", "bench")
        root = Path(tempfile.mkdtemp(prefix="shoal-bench-rt-"))
        shoal = asyncio.run(shoal_side(ctd, image, args.count, root))
        ctr = ctr_side(ctd, image, args.count)
    s, c = statistics.median(shoal) * 1000, statistics.median(ctr) * 1000
    print("| what | median per container |\n|---|---|")
    print(f"| Shoal runtime: create + start (gRPC) | {s:.0f} ms |")
    print(f"| `ctr run -d` | {c:.0f} ms |")
    print(f"\nShoal / ctr: {s / c:.2f}x")


if __name__ == "__main__":
    main()
