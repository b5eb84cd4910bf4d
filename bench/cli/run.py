"""swarmctl's start-up: `swarmctl service ls` against a running manager.

    python -m bench.cli.run [--rounds 20] [--services 10] [--baseline DIR]

Starts a manager (embedded etcd, no workers) with N services, then times, round
by round so every command sees the same machine load, the wall time of:

- `python -c pass`: the interpreter's own floor, the `docker --help` of Python;
- `swarmctl service ls`: the read over the manager's HTTP socket (today's path);
- the same listing over gRPC, as swarmctl did it before (click, the gRPC client,
  protobuf views, the table): the "before" of the same run;
- `swarmctl --help`, and `curl --unix-socket` on the same endpoint if curl exists;
- with `--baseline DIR`, `swarmctl service ls` from another checkout of Shoal (say,
  main before the HTTP socket; it reads over gRPC, which this manager serves too).

Medians of the rounds; also each command's import time (`python -X importtime`,
the sum of the top-level imports' cumulative times, least of 5 runs) and whether gRPC or protobuf
got loaded. Writes bench/cli/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.guard import exit_cleanly_on_signals
from shoal.lab.procs import ManagerProcess

SWARMCTL = str(Path(sys.executable).parent / "swarmctl")

# What `swarmctl service ls` did before the HTTP socket: gRPC, protobuf views, a table.
GRPC_LS = """
import sys
from shoal.swarmctl import cli, output
from shoal.swarmctl.client import Client
from shoal import views
c = Client(sys.argv[1])
names = {n.id: n.spec.annotations.name for n in c.list_networks()}
vs = [views.service_view(s, names) for s in c.list_services()]
output.print_table(output.SERVICE_HEADERS, output.service_rows(vs))
"""


def commands(socket: Path, baseline: Path | None) -> dict[str, list[str]]:
    rest = str(socket).removesuffix(".sock") + ".http.sock"
    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "swarmctl service ls (HTTP socket)": [SWARMCTL, "--socket", str(socket), "service", "ls"],
        "service ls over gRPC (before)": [sys.executable, "-c", GRPC_LS, str(socket)],
        "swarmctl --help": [SWARMCTL, "--help"],
    }
    if baseline is not None:
        # The entry point's code comes from PYTHONPATH: the baseline's swarmctl.
        cmds["swarmctl service ls, baseline checkout"] = [
            "env",
            f"PYTHONPATH={baseline}",
            SWARMCTL,
            "--socket",
            str(socket),
            "service",
            "ls",
        ]
    if shutil.which("curl"):
        cmds["curl --unix-socket .../services"] = [
            "curl",
            "-sf",
            "--unix-socket",
            rest,
            "http://shoal/services",
        ]
    return cmds


def wall(cmd: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run: CPU time (user + system) suffers less from a
    loaded machine than wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def import_profile(cmd: list[str], runs: int = 5) -> tuple[float, bool]:
    """(ms of imports, gRPC or protobuf among them) of a Python command: the least of
    `runs` runs, the one the machine's load disturbed least."""
    profiles = [_imports(cmd) for _ in range(runs)]
    return min(ms for ms, _ in profiles), any(heavy for _, heavy in profiles)


def _imports(cmd: list[str]) -> tuple[float, bool]:
    env = None
    if cmd[0] == "env":
        env = {**os.environ, "PYTHONPATH": cmd[1].split("=", 1)[1]}
        cmd = cmd[2:]
    if cmd[0] == SWARMCTL:
        cmd = [sys.executable, SWARMCTL, *cmd[1:]]
    if not cmd[0].endswith(("python", "python3")) and cmd[0] != sys.executable:
        return 0.0, False
    err = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], check=True, capture_output=True, text=True, env=env
    ).stderr
    total, heavy = 0, False
    for line in err.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        heavy |= name.strip().split(".")[0] in ("grpc", "google")
        if not name.startswith("  "):  # top level: its cumulative time covers its children
            total += int(cumulative)
    return total / 1000, heavy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--baseline", type=Path, metavar="DIR", help="Another checkout of Shoal.")
    args = p.parse_args()
    exit_cleanly_on_signals(limit_s=1800)
    state = Path(tempfile.mkdtemp(prefix="shoal-bench-cli-"))
    manager = ManagerProcess(state / "m").start()
    try:
        for i in range(args.services):
            manager.ctl("service", "create", "-d", "--name", f"s{i}", "--image", "busybox")
        cmds = commands(manager.socket, args.baseline)
        for cmd in cmds.values():  # warm the page cache
            wall(cmd)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                times[name].append(wall(cmd))
        imports = {name: import_profile(cmd) for name, cmd in cmds.items()}
    finally:
        manager.stop()
        shutil.rmtree(state, ignore_errors=True)
    report(times, imports, args)


def report(
    times: dict[str, list[tuple[float, float]]],
    imports: dict[str, tuple[float, bool]],
    args: argparse.Namespace,
) -> None:
    def median(name: str, i: int) -> float:
        return statistics.median(t[i] for t in times[name])

    floor = median("python -c pass", 0)
    results = {}
    print(f"{args.rounds} rounds, {args.services} services; medians\n")
    print("| command | wall | vs `python -c pass` | CPU | imports | gRPC/protobuf loaded |")
    print("|---|---|---|---|---|---|")
    for name in times:
        med, cpu = median(name, 0), median(name, 1)
        ms, heavy = imports[name]
        results[name] = {
            "median_s": med,
            "median_cpu_s": cpu,
            "imports_ms": ms,
            "grpc_or_protobuf": heavy,
        }
        print(
            f"| {name} | {med * 1000:.0f} ms | {med / floor:.2f}x | {cpu * 1000:.0f} ms | "
            f"{ms:.0f} ms | {'yes' if heavy else 'no'} |"
        )
    before = median("service ls over gRPC (before)", 0)
    after = median("swarmctl service ls (HTTP socket)", 0)
    print(f"\nservice ls, HTTP socket / gRPC: {after / before:.2f}x")
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"rounds": args.rounds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
