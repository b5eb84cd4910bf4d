"""Cold pull of a realistic image: Shoal's `service create` -> running against containerd's
own client (`ctr image pull` + `ctr run -d`), each on a fresh containerd.

    python -m bench.pull.run [--rounds 5] [--before GIT_REF...] [--profile DIR] [--json PATH]

The image (bench/pull/image.py): 7 gzip layers, ~57 MB compressed, built from the
host's own files, pushed to a loopback docker-registry. Every round starts each side
from nothing (a new containerd, so the image is not there), and the sides alternate
which goes first:
  ctr    `ctr image pull --plain-http REF` then `ctr run -d REF c1` (the image's sleep)
  shoal  a manager + one agent on the fresh containerd; `swarmctl service create
         --image REF` (it returns once the task runs), timed from the command's start
  before the same Shoal side with the agent run from GIT_REF's code (`git archive` of
         the repository into a temp dir): the before/after in the same run; more refs
         after the first are sides of their own, named by the ref
--profile DIR runs py-spy on the agent during one Shoal round and writes its flame
graph and top functions there. Medians, the Shoal/ctr ratios of the medians and the
median of each round's own ratio, and the load average, are printed (and
written to --json). Everything started is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.codepath import daemons_from
from bench.guard import exit_cleanly_on_signals
from bench.pull.image import build
from shoal.lab.containerd import Containerd
from shoal.lab.images import push_image
from shoal.lab.procs import ManagerProcess, WorkerProcess, terminate, wait_for
from shoal.lab.registry import Registry

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 300


def run(argv: list[str]) -> None:
    got = subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT_S)
    if got.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])}: {got.stderr.strip()[-1000:]}")


def ctr_round(image: str) -> float:
    ns = f"bench-pull-{uuid.uuid4().hex[:8]}"
    with Containerd() as ctd:
        ctr = ["ctr", "-a", str(ctd.socket), "-n", ns]
        t = time.perf_counter()
        run([*ctr, "images", "pull", "--plain-http", image])
        run([*ctr, "run", "-d", image, "c1"])
        took = time.perf_counter() - t
        tasks = subprocess.run([*ctr, "task", "ls"], check=True, capture_output=True, text=True)
        assert "RUNNING" in tasks.stdout, tasks.stdout
        # Through runc, so its state (kept outside containerd's dirs) goes too.
        run([*ctr, "task", "kill", "-s", "KILL", "c1"])
        for _ in range(50):
            gone = subprocess.run([*ctr, "task", "rm", "-f", "c1"], capture_output=True)
            if gone.returncode == 0:
                break
            time.sleep(0.1)
        run([*ctr, "containers", "rm", "c1"])
    with contextlib.suppress(OSError):
        Path(f"/run/containerd/runc/{ns}").rmdir()  # runc's, outside containerd's dirs
    return took


def shoal_round(image: str, tree: Path | None, profile: Path | None = None) -> float:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-pull-"))
    manager = worker = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        with Containerd() as ctd:
            manager = ManagerProcess(root / "m").start()
            token = manager.ctl("cluster", "join-token", "worker", "-q").out.strip()
            with daemons_from(tree):
                worker = WorkerProcess(root / "w", manager.addr, token, "--hostname", "w",
                                       "--containerd-socket", str(ctd.socket)).start()  # fmt: skip
            wait_for(lambda: ready(manager), 60, "the agent's node ready")  # start-up only
            if profile is not None:
                assert worker.proc is not None
                spy = subprocess.Popen(
                    ["py-spy", "record", "-r", "200", "-o", str(profile / "agent.svg"), "-p",
                     str(worker.proc.pid)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)  # fmt: skip
                time.sleep(1)  # py-spy attached
            t = time.perf_counter()
            got = manager.ctl("service", "create", "--name", "pull", "--image", image,
                              "--timeout", f"{LIMIT_S}s", timeout=LIMIT_S + 30)  # fmt: skip
            took = time.perf_counter() - t
            assert got.code == 0, got.err
            (svc,) = json.loads(manager.ctl("service", "ls", "--format", "json").out)
            assert svc["running"] == 1, svc
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            node = worker.node_id
            worker.stop()
            manager.stop()
        # runc's state of the node's (killed) container, kept outside containerd's dirs.
        shutil.rmtree(f"/run/containerd/runc/shoal-{node}", ignore_errors=True)
        return took
    finally:
        for proc in (spy, worker.proc if worker else None, manager.proc if manager else None):
            if proc is not None:
                terminate(proc, timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def ready(manager: ManagerProcess) -> bool:
    """The agent's session is up (the node reads ready), not just its join done."""
    got = manager.ctl("node", "ls", "--format", "json")
    return got.code == 0 and any(
        n["role"] == "worker" and n["status"] == "ready" for n in json.loads(got.out)
    )


def archive(ref: str) -> Path:
    """GIT_REF's shoal package in a temp dir (read from the repository's objects)."""
    out = Path(tempfile.mkdtemp(prefix="shoal-bench-before-"))
    tar = subprocess.run(["git", "-C", str(REPO), "archive", ref, "shoal"], check=True,
                         capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(out)], input=tar, check=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--before",
        metavar="GIT_REF",
        nargs="+",
        default=[],
        help="also time the agent of these commits (side `before` for the first)",
    )
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the agent in round 1")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "pull" / "results.json")
    args = p.parse_args()
    exit_cleanly_on_signals(limit_s=3600)
    blobs, used = build()
    layers = json.loads(blobs["manifest"])["layers"]
    size = sum(x["size"] for x in layers)
    print(f"image: {len(layers)} layers, {size / 1e6:.1f} MB compressed, from {', '.join(used)}",
          flush=True)  # fmt: skip
    trees = {("before" if i == 0 else ref): archive(ref) for i, ref in enumerate(args.before)}
    sides = ["ctr", "shoal", *trees]
    times: dict[str, list[float]] = {s: [] for s in sides}
    loads: list[float] = []
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        with Registry() as reg:
            image = push_image(reg.addr, "pull/host", "v1", blobs)
            for r in range(args.rounds):
                loads.append(os.getloadavg()[0])
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                for side in order:
                    if side == "ctr":
                        took = ctr_round(image)
                    else:
                        prof = args.profile if args.profile and r == 0 and side == "shoal" else None
                        took = shoal_round(image, trees.get(side), prof)
                    times[side].append(took)
                    print(f"round {r + 1} {side}: {took:.2f} s", flush=True)
    finally:
        for tree in trees.values():
            shutil.rmtree(tree, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    report(times, loads, size, len(layers), args)


def report(
    times: dict[str, list[float]], loads: list[float], size: int, n: int, args: argparse.Namespace
) -> None:
    """Medians, their ratio to ctr's, and the median of each round's own ratio (the
    sides of a round run back to back: steadier on a machine whose load drifts)."""
    med = {s: statistics.median(v) for s, v in times.items()}
    paired = {
        s: statistics.median(x / c for x, c in zip(v, times["ctr"], strict=True))
        for s, v in times.items()
    }
    print("\n| side | rounds | median | / ctr | per-round / ctr, median |\n|---|---|---|---|---|")
    for side, v in times.items():
        rounds = ", ".join(f"{x:.2f}" for x in v)
        print(f"| {side} | {rounds} | {med[side]:.2f} s | {med[side] / med['ctr']:.2f}x "
              f"| {paired[side]:.2f}x |")  # fmt: skip
    print(f"\nload average (1 min) at each round's start and the end: "
          f"{', '.join(f'{x:.1f}' for x in loads)}")  # fmt: skip
    args.json.write_text(json.dumps({
        "image": {"layers": n, "compressed_bytes": size}, "rounds": times, "median": med,
        "ratio": {s: med[s] / med["ctr"] for s in med}, "paired_ratio": paired,
        "before": args.before, "load_average": loads, "python": sys.version.split()[0],
    }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
