"""What the containers' seccomp filter costs runc: `runc create` + `runc start` of a
busybox bundle, no containerd, with Shoal's profile as this kernel gets it, the same
profile with the x32 ABI added back (what every container paid before), and no filter.

    python -m bench.runtime.run --seccomp 25

Rounds alternate between the three; each container is removed before the next.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from shoal.lab.images import BUSYBOX
from shoal.worker.runtime import seccomp


def _bundle(root: Path) -> dict[str, Any]:
    rootfs = root / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    subprocess.run(["runc", "spec", "--bundle", str(root)], check=True)
    spec: dict[str, Any] = json.loads((root / "config.json").read_text())
    spec["process"].update(terminal=False, args=["/bin/busybox", "sleep", "1000"])
    spec["root"]["readonly"] = True
    return spec


def _variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    profile = seccomp.profile(set(spec["process"]["capabilities"]["bounding"]))
    every_abi = dict(profile, architectures=seccomp.ARCHITECTURES.get(platform.machine(), []))
    return {
        "Shoal's profile": profile,
        "the same, every ABI of the arch (before)": every_abi,
        "no filter": {},
    }


def _create_start(root: Path, name: str) -> float:
    t = time.perf_counter()
    try:
        subprocess.run(
            ["runc", "create", "--bundle", str(root), name], check=True, stdin=subprocess.DEVNULL
        )
        subprocess.run(["runc", "start", name], check=True)
        return time.perf_counter() - t
    finally:
        subprocess.run(["runc", "delete", "--force", name], check=False)


def run(rounds: int) -> dict[str, float]:
    """Median seconds of create + start per variant."""
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-seccomp-"))
    try:
        spec = _bundle(root)
        variants = _variants(spec)
        times: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(rounds):
            for name, profile in variants.items():
                linux = dict(spec["linux"])
                linux.pop("seccomp", None)
                if profile:
                    linux["seccomp"] = profile
                (root / "config.json").write_text(json.dumps(dict(spec, linux=linux)))
                times[name].append(_create_start(root, f"shoal-bench-sc-{i}"))
        return {k: statistics.median(v) for k, v in times.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(rounds: int) -> None:
    medians = run(rounds)
    first = next(iter(medians))
    print("| seccomp filter | runc create + start, median |\n|---|---|")
    for name, s in medians.items():
        print(f"| {name} | {s * 1000:.1f} ms |")
    for name, s in list(medians.items())[1:]:
        print(f"{first} / {name}: {medians[first] / s:.2f}x")
    print("architectures now:", ", ".join(seccomp.architectures(platform.machine())))
