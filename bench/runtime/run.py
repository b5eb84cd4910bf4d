"""Container start cost: Shoal's containerd runtime against `ctr run -d`, same containerd.

    python -m bench.runtime.run [--count 10] [--first-rounds 5] [--baseline DIR]

A private containerd and a local registry with the tiny busybox image; the
image is pulled once by each side first. Then, serially, N containers created
and started by Shoal's runtime (gRPC, the product path) and N by `ctr run -d`
(containerd's own CLI, the ANCHORS figure: ~180 ms each). Reports the median
per container and the ratio. Then, on the same containerd, the whole system
(bench/runtime/first.py): create -> first container running, for a one-replica
service and for the first of 20, set against the runtime's own create + start;
create 20 -> all running and scale 20 -> 40; and the CPU per container of
containerd (with its shims and runc) and of the agent.
Everything is removed at the end. `--seccomp ROUNDS`: only what the seccomp filter
costs runc itself (bench/runtime/seccomp.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.guard import exit_cleanly_on_signals
from bench.runtime.first import first_container
from bench.runtime.seccomp import report as seccomp_cost
from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.registry import Registry
from shoal.worker.runtime.base import ContainerConfig
from shoal.worker.runtime.containerd import ContainerdRuntime


async def shoal_side(
    ctd: Containerd, image: str, count: int, root: Path, oci: str = "auto"
) -> list[float]:
    rt = ContainerdRuntime(str(ctd.socket), "bench-shoal", root, oci_runtime=oci)
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


def ctr_side(ctd: Containerd, image: str, count: int, oci: str = "runc") -> list[float]:
    ctr = ["ctr", "-a", str(ctd.socket), "-n", "bench-ctr"]
    binary = ["--runc-binary", oci] if oci != "runc" else []
    subprocess.run([*ctr, "images", "pull", "--plain-http", image], check=True, capture_output=True)
    times = []
    try:
        for i in range(count):
            t = time.perf_counter()
            subprocess.run(
                [*ctr, "run", *binary, "-d", image, f"c{i}", "sleep", "60"],
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t)
    finally:
        for i in range(count):
            subprocess.run([*ctr, "task", "kill", "-s", "KILL", f"c{i}"], capture_output=True)
            time.sleep(0.05)
            subprocess.run([*ctr, "task", "rm", "-f", f"c{i}"], capture_output=True)
            subprocess.run([*ctr, "containers", "rm", f"c{i}"], capture_output=True)
    return times


def report_first(first: dict[str, dict[str, Any]], rounds: int, runtime_s: float) -> None:
    print(f"\nCreate -> first container running, median of {rounds} rounds:\n")
    print("| bed | service | create RPC returned -> task RUNNING | vs runtime create + start |")
    print("|---|---|---|---|")
    for code, r in first.items():
        for what, key in (
            ("1 replica", "first_of_1_s"),
            ("20 replicas, the first", "first_of_20_s"),
            ("20 replicas, the last", "last_of_20_s"),
            ("create 20 -> all running (client)", "create_20_s"),
            ("scale 20 -> 40 -> all running (client)", "scale_20_40_s"),
        ):
            ms = r[key] * 1000
            print(f"| {code} | {what} | {ms:.0f} ms | {ms / runtime_s:.2f}x |")
    print("\nCPU per container over create 20 + scale 20 -> 40 (median of the rounds):\n")
    print(
        "| bed | containerd + shims + OCI runtime | + the runtime's init in the container's "
        "cgroup | the agent |\n|---|---|---|---|"
    )
    for code, r in first.items():
        ctd, agent = r["ctd_cpu_per_container_s"], r["agent_cpu_per_container_s"]
        both = ctd + r["init_cpu_per_container_s"]
        print(f"| {code} | {ctd * 1000:.1f} ms | {both * 1000:.1f} ms | {agent * 1000:.1f} ms |")
    for code, r in first.items():
        print(
            f"\n{code}, rounds (ms): 1 replica {[round(x * 1000) for x in r['rounds_1']]}, "
            f"first of 20 {[round(x * 1000) for x in r['rounds_20']]}"
        )
    names = list(first)
    for other in names[1:]:  # each bed against the first one
        for key in first[names[0]]:
            if key.endswith("_s"):
                ratio = first[names[0]][key] / first[other][key]
                print(f"{key}: {names[0]} / {other} {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--first-rounds", type=int, default=5, help="0: skip the whole-system part")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="Another checkout of Shoal to run the whole-system part from too (before/after).",
    )
    p.add_argument(
        "--oci-runtimes",
        default="",
        metavar="A,B",
        help="Compare OCI runtimes (say crun,runc): one bed each, rounds alternating.",
    )
    p.add_argument(
        "--seccomp",
        type=int,
        metavar="ROUNDS",
        help="Only this: runc create + start with and without parts of the seccomp filter.",
    )
    args = p.parse_args()
    if args.seccomp:
        seccomp_cost(args.seccomp)
        return
    ocis = [o for o in args.oci_runtimes.split(",") if o] or ["auto"]
    exit_cleanly_on_signals()
    load = os.getloadavg()[0]
    serial: dict[str, tuple[list[float], list[float]]] = {}
    with Registry() as reg, Containerd() as ctd:
        image = push_image(reg.addr, "busybox", "bench")
        for oci in ocis:
            root = Path(tempfile.mkdtemp(prefix="shoal-bench-rt-"))
            try:
                shoal = asyncio.run(shoal_side(ctd, image, args.count, root, oci))
            finally:
                shutil.rmtree(root, ignore_errors=True)  # the containers' logs
            ctr = ctr_side(ctd, image, args.count, "runc" if oci == "auto" else oci)
            serial[oci] = shoal, ctr
        beds = ocis if args.oci_runtimes else None
        first = (
            first_container(ctd, image, args.first_rounds, args.baseline, beds)
            if args.first_rounds
            else None
        )
    print("| OCI runtime | what | median per container |\n|---|---|---|")
    for oci, (shoal, ctr) in serial.items():
        s, c = statistics.median(shoal) * 1000, statistics.median(ctr) * 1000
        print(f"| {oci} | Shoal runtime: create + start (gRPC) | {s:.0f} ms |")
        print(f"| {oci} | `ctr run -d` | {c:.0f} ms |")
        print(f"\n{oci}: Shoal / ctr: {s / c:.2f}x")
    print(f"load average (1 min): {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if first is not None:
        report_first(first, args.first_rounds, statistics.median(serial[ocis[0]][0]) * 1000)


if __name__ == "__main__":
    main()
