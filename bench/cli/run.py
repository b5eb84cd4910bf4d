"""swarmctl's start-up: `swarmctl service ls`, `service scale -d` and `service
create -d` against a running manager.

    python -m bench.cli.run [--rounds 20] [--services 10] [--baseline DIR]

Starts a manager (embedded etcd, no workers) with N services, then times, round
by round so every command sees the same machine load, the wall time of:

- `python -c pass`: the interpreter's own floor, the `docker --help` of Python;
- `swarmctl service ls`: the read over the manager's HTTP socket (today's path);
- the same listing over gRPC, as swarmctl did it before (click, the gRPC client,
  protobuf views, the table): the "before" of the same run;
- `swarmctl --help`, and `curl --unix-socket` on the same endpoint if curl exists;
- `swarmctl service scale s0=N --detach` (N alternates 1, 2: a real change each
  round) and `swarmctl service create --detach` (a new service each round), both
  over the HTTP socket;
- with `--baseline DIR`, the same `service ls`, `scale` and `create` from another
  checkout of Shoal (say, main: ls over the HTTP socket, writes over gRPC, which
  this manager serves too).

Services use an image on a closed loopback port (`127.0.0.1:9/busybox`): the
manager's attempt to pin it to a digest fails at once, without leaving the host
(no workers run them anyway).

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


IMAGE = "127.0.0.1:9/busybox"


def writes(ctl: list[str], n: int, tag: str) -> dict[str, list[str]]:
    """Round n's `service scale` and `service create`, both detached (a new name each)."""
    return {
        "service scale s0=N --detach": [*ctl, "service", "scale", f"s0={1 + n % 2}", "-d"],
        "service create --detach": [
            *ctl, "service", "create", "-d", "--name", f"{tag}{n}", "--image", IMAGE,
        ],
    }  # fmt: skip


def commands(socket: Path, baseline: Path | None, n: int = 0) -> dict[str, list[str]]:
    """The commands of round n (the writes change something every round)."""
    rest = str(socket).removesuffix(".sock") + ".http.sock"
    ctl = [SWARMCTL, "--socket", str(socket)]
    cmds = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "swarmctl service ls (HTTP socket)": [*ctl, "service", "ls"],
        "service ls over gRPC (before)": [sys.executable, "-c", GRPC_LS, str(socket)],
        "swarmctl --help": [SWARMCTL, "--help"],
    }
    for name, cmd in writes(ctl, n, "h").items():
        cmds[f"swarmctl {name} (HTTP socket)"] = cmd
    if baseline is not None:
        # The entry point's code comes from PYTHONPATH: the baseline's swarmctl.
        base = ["env", f"PYTHONPATH={baseline}", *ctl]
        cmds["swarmctl service ls, baseline checkout"] = [*base, "service", "ls"]
        for name, cmd in writes(base, n, "b").items():
            cmds[f"swarmctl {name}, baseline checkout"] = cmd
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
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


def import_profile(cmds: list[list[str]]) -> tuple[float, bool]:
    """(ms of imports, gRPC or protobuf among them) of a Python command (one run of
    each form given): the least, the one the machine's load disturbed least."""
    profiles = [_imports(cmd) for cmd in cmds]
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
            manager.ctl("service", "create", "-d", "--name", f"s{i}", "--image", IMAGE)
        sock, base = manager.socket, args.baseline
        cmds = commands(sock, base, -1)
        for cmd in cmds.values():  # warm the page cache
            wall(cmd)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        for n in range(args.rounds):
            for name, cmd in commands(sock, base, n).items():
                times[name].append(wall(cmd))
        # Five more runs of each, under -X importtime.
        more = [commands(sock, base, args.rounds + i) for i in range(5)]
        imports = {name: import_profile([c[name] for c in more]) for name in cmds}
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
    for write in ("service scale s0=N --detach", "service create --detach"):
        base = f"swarmctl {write}, baseline checkout"
        if base in times:
            ratio = median(f"swarmctl {write} (HTTP socket)", 0) / median(base, 0)
            print(f"{write}, HTTP socket / baseline checkout: {ratio:.2f}x")
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"rounds": args.rounds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
