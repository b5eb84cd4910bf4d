"""The manager at rest: N hollow nodes joined, no task moving, CPU-s per second.

    python -m bench.scale.rest --nodes 1000 --seconds 30
    python -m bench.scale.rest --nodes 1000 --trees /tmp/before . --rounds 3

What a fleet costs the manager while nothing happens (heartbeats, HTTP/2 keepalive
pings, timers), and where: its threads' CPU from /proc/PID/task/*/stat, grouped
by thread name (gRPC core's `event_engine` threads, which py-spy does not sample,
apart from the Python ones). With --trees, the manager and the hollow agents of
each run import Shoal from that checkout, runs alternating tree by tree, so
before/after figures come from the same invocation and the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.guard import exit_cleanly_on_signals
from bench.scale.run import (
    CLK_TCK,
    cpu_seconds,
    join_limit,
    raise_fd_limit,
    start_hollows,
    start_manager,
    stop_all,
    wait_ready_workers,
    wait_socket,
)
from shoal.manager.etcd_embedded import EmbeddedEtcd, free_port
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU-s by thread name ("event_engine", "python", ...) for one process."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def perf_profile(pid: int, out: Path, seconds: float = 10) -> str:
    """perf (cpu-clock, which needs no hardware counters) on the manager at rest, after
    the measured window: gRPC core's threads, which py-spy does not see, included.
    Returns the share of samples by thread name and library."""
    record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid)]
    subprocess.run(
        [*record, "-o", str(out), "--", "sleep", str(seconds)],
        check=True,
        capture_output=True,
    )
    by_library = ["--no-children", "--sort", "comm,dso", "--stdio", "-g", "none"]
    report = subprocess.run(
        ["perf", "report", "-i", str(out), *by_library],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "\n".join(line for line in report.splitlines() if "%" in line and "#" not in line)


def wait_ready(ctl: api_grpc.ControlStub, want: int, limit_s: float) -> int:
    """Waits until `want` workers are ready; returns how many are."""
    deadline = time.monotonic() + limit_s
    while True:
        listed = ctl.ListNodes(api.ListNodesRequest()).nodes
        ready = sum(
            1 for n in listed if n.status.state == pb.NODE_READY and n.role == pb.ROLE_WORKER
        )
        if ready >= want:
            return ready
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready}/{want} nodes ready after {limit_s:.0f}s")
        time.sleep(1)


def rest_once(
    nodes: int,
    seconds: float,
    settle: float,
    procs: int,
    perf: Path | None = None,
    allow_missing: int = 0,
) -> dict[str, Any]:
    """One manager and `nodes` hollow agents; the manager's CPU over `seconds` at rest
    (then, with `perf`, a profile of it written there)."""
    raise_fd_limit(nodes)
    root = Path(tempfile.mkdtemp(prefix="shoal-rest-"))
    started = []
    etcd = EmbeddedEtcd(root)
    try:
        asyncio.run(etcd.start())
        manager, addr = start_manager(root, etcd, free_port())
        started.append(manager)
        ctl = wait_socket(root / "manager" / "control.sock", manager, root / "manager.log")
        token = ctl.GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
        hollows = start_hollows(root, nodes, procs, addr, token)
        started += hollows
        if allow_missing:
            ready = wait_ready(ctl, nodes - allow_missing, join_limit(nodes))
        else:
            wait_ready_workers(ctl, nodes, hollows, join_limit(nodes))
            ready = nodes
        time.sleep(settle)  # the joins' after-effects (re-announced periods) pass
        load0, cpu0, threads0 = loadavg(), cpu_seconds(manager.pid), thread_cpu(manager.pid)
        agents0 = sum(cpu_seconds(h.pid) for h in hollows)
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu, threads = cpu_seconds(manager.pid) - cpu0, thread_cpu(manager.pid)
        split = {k: round((v - threads0.get(k, 0.0)) / wall, 4) for k, v in threads.items()}
        if perf is not None:
            summary = perf_profile(manager.pid, perf)
            perf.with_suffix(".txt").write_text(summary + "\n")
        return {
            "nodes": nodes,
            "ready": ready,
            "cpu_s_per_s": round(cpu / wall, 4),
            "threads_cpu_s_per_s": {k: v for k, v in sorted(split.items()) if v > 0},
            "agents_cpu_s_per_s": round(
                (sum(cpu_seconds(h.pid) for h in hollows) - agents0) / wall, 4
            ),
            "load": [load0, loadavg()],
            # Sessions the agents saw end (a healthy run at rest has none).
            "agent_sessions_ended": sum(
                log.read_text(errors="replace").count("ended: ")
                for log in root.glob("hollow-*.log")
            ),
        }
    finally:
        stop_all(started)
        asyncio.run(etcd.stop())
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=30.0, help="measured at rest")
    p.add_argument("--settle", type=float, default=10.0, help="wait after the joins")
    p.add_argument("--procs", type=int, default=4, help="processes the hollow nodes share")
    p.add_argument(
        "--trees", nargs="*", type=Path, default=[], help="Shoal checkouts to compare (alternating)"
    )
    p.add_argument(
        "--variants",
        type=json.loads,
        default={"": {}},
        help='JSON {"name": {"ENV_VAR": "value"}}: environments to compare (alternating), '
        'e.g. gRPC core\'s GRPC_EXPERIMENTS',
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--allow-missing",
        type=int,
        default=0,
        metavar="N",
        help="measure once all but N nodes are ready (a mass join may strand a few agents)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--perf", type=Path, metavar="DIR", help="after each window, perf record the manager"
    )
    args = p.parse_args()
    exit_cleanly_on_signals(3600)
    trees = [t.resolve() for t in args.trees] or [None]
    runs = [(f"{t or '.'} {v}".strip(), t, env) for t in trees for v, env in args.variants.items()]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in runs}
    base_env = dict(os.environ)
    for round_ in range(args.rounds):
        for label, tree, env in runs:
            os.environ.clear()
            os.environ.update(base_env, **env)
            if tree is not None:
                # `python -m` puts the working directory first on sys.path: the
                # daemons import from the tree only when started in it.
                os.environ["PYTHONPATH"] = str(tree)
                os.chdir(tree)
            perf = None
            if args.perf is not None:
                args.perf.mkdir(parents=True, exist_ok=True)
                name = f"{label.replace('/', '_').replace(' ', '-')}-{args.nodes}-{round_}.data"
                perf = args.perf.resolve() / name
            r = rest_once(
                args.nodes, args.seconds, args.settle, args.procs, perf, args.allow_missing
            )
            print(json.dumps({"run": label, **r}), flush=True)
            results[label].append(r)
    for label, rs in results.items():
        values = [r["cpu_s_per_s"] for r in rs]
        print(f"{label}: manager CPU-s/s at rest {values}, median {statistics.median(values)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
