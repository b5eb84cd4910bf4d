"""Shoal against Docker Swarm on real containers, side by side on this machine.

    python -m bench.vs_swarm.run [--hosts 1|3] [--rounds 3] [--replicas N] [--scale-to M]
                                 [--out PATH]

--hosts 3 (defaults: 60 replicas, scaled to 120): three netns worker hosts per
system, a host lost step; see bench/vs_swarm/hosts3.py. What follows is the
one-node mode (the default; 20 replicas, scaled to 40).

Docker side: Debian's docker.io (installed with apt-get if missing; its system
service is neither started nor used), a dockerd of our own: own data root, exec
root, socket, pidfile and config file, no iptables, no bridge, no ip forwarding.
It runs in a network namespace of its own (shoal/lab/hosts.py), because
`docker swarm init` adds docker_gwbridge, with an address and a route, to the
namespace dockerd runs in. A local registry runs in that namespace too, and
the swarm is `docker swarm init --advertise-addr 127.0.0.1`.

Shoal side: a manager (embedded etcd) and one worker agent on a private
containerd (shoal/lab), a local registry, all on loopback.

Both registries serve the busybox image shoal/lab/images.py builds (same
bytes, same digest; checked). Each system first runs a one-replica warm-up
service (pulls the image), then each round runs both systems, alternating
which goes first, through their own CLIs:

  create   service create, N replicas        -> N/N running
  scale    service scale N -> M               -> M/M running
  replace  SIGKILL one task's container process (pid from the runtime:
           `docker inspect`, `ctr task ls`)   -> a new task running, M/M
  remove   service rm                         -> no container of the service left

Swarm is observed by polling its CLI every 100 ms (`docker service ls`,
`docker service ps`, `docker ps -a`); it has no watch. Its create and scale
are run with -d: without it, the docker CLI waits a further 5 s "to verify that
tasks are stable" once they run. Shoal's create and scale
are `swarmctl` without --detach, which follows the service over the manager's
watch and returns when it converged; the replacement is followed over the same
watch (WatchService, then ListTasks), the removal by polling `ctr containers ls`
every 100 ms. Every time includes the CLI's own start. The containers run
`sh -c "trap 'exit 0' TERM; sleep 3600 & wait"`: a sleep that stops on SIGTERM,
so removal measures the orchestrators, not the 10 s stop grace period both
default to. Restart delays are both systems' defaults, read back from the
services and reported.

After each create, both systems' own task records give a timeline (last task
created, first and last task running, from the service's creation): what the
orchestrator and the runtime took, without the CLIs and polling.

Prints a table of medians and Shoal/Swarm ratios, writes JSON (--out).
Everything it starts is stopped and removed at the end, also on failure or a
signal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.guard import exit_cleanly_on_signals
from bench.vs_swarm.common import (
    COMMAND,
    DOCKERD_SIDE_PATHS,
    GOALS,
    POLL_S,
    REPO,
    STEPS,
    System,
    ensure_docker,
    ignore_signals,
    remove_new,
    run_record,
)
from bench.vs_swarm.hosts3 import run_hosts, summarise_hosts
from bench.vs_swarm.shoal_side import Shoal
from bench.vs_swarm.swarm import Swarm
from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Hosts
from shoal.lab.images import build_image, push_image
from shoal.lab.registry import Registry
from shoal.lab.sweep import mounts_under, processes_mentioning


def run_rounds(
    systems: list[System], rounds: int, n: int, m: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float], dict[str, list[dict[str, float]]]]:
    """Each round runs every step on both systems, alternating which goes first."""
    times: dict[str, dict[str, list[float]]] = {s.name: {k: [] for k in STEPS} for s in systems}
    delays: dict[str, float] = {}
    timelines: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for r in range(rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            service = f"bench{r}"
            got = {"create": system.create(service, n)}
            timelines[system.name].append(system.timeline(service))
            got["scale"] = system.scale(service, m)
            delays[system.name] = system.restart_delay_s(service)
            got["replace"] = system.replace(service, m)
            got["remove"] = system.remove(service)
            for k, v in got.items():
                times[system.name][k].append(v)
            print(
                f"round {r + 1}/{rounds} {system.name:5}: "
                + "  ".join(f"{k} {v:.2f}s" for k, v in got.items()),
                flush=True,
            )
            time.sleep(1)  # let the removed service's last work settle before the other side
    return times, delays, timelines


def run_bench(args: argparse.Namespace, root: Path, stack: ExitStack) -> dict[str, Any]:
    hosts = Hosts(1)
    stack.callback(hosts.close)
    swarm = Swarm(hosts[0], root / "docker")
    docker_reg = Registry(host="127.0.0.1", port=5000, wrap=hosts[0].cmd())
    stack.callback(docker_reg.stop)
    docker_reg.start()
    stack.callback(swarm.stop)
    print(
        "starting dockerd (own netns, data root, exec root, socket) and a one-node swarm",
        flush=True,
    )
    swarm.start(docker_reg.addr)
    docker_ref = (
        hosts[0]
        .run(sys.executable, "-m", "shoal.lab.images", docker_reg.addr, "busybox", cwd=str(REPO))
        .stdout.split()[0]
    )

    print("starting Shoal: containerd, registry, manager (embedded etcd), one worker", flush=True)
    containerd = stack.enter_context(Containerd())
    shoal_reg = stack.enter_context(Registry())
    shoal_ref = push_image(shoal_reg.addr, "busybox", "latest")
    shoal = Shoal(root / "shoal", containerd)
    stack.callback(shoal.stop)
    # The worker's task namespaces (if any) go with the host namespaces.
    hosts.node_ids.append(shoal.start())

    expected = build_image()["manifest_digest"].decode()
    digests = {"Swarm": swarm.load(docker_ref), "Shoal": shoal.load(shoal_ref)}
    swarm.create("warmup", 1)
    swarm.remove("warmup")
    assert set(digests.values()) == {expected}, f"image digests differ: {digests}, {expected}"
    print(
        f"image {expected[:19]}... loaded into both (Swarm {docker_ref}, Shoal {shoal_ref})",
        flush=True,
    )

    n, m = args.replicas, args.scale_to
    times, delays, timelines = run_rounds([shoal, swarm], args.rounds, n, m)
    return {
        **run_record(swarm.version(), shoal.version()),
        "config": {
            "rounds": args.rounds,
            "replicas": n,
            "scale_to": m,
            "command": COMMAND,
            "swarm_poll_interval_s": POLL_S,
            "restart_delay_s": delays,
            "shoal_restart_note": "a slot's first restart is immediate, then 250 ms doubling "
            "up to the delay",
            "image_digest": expected,
        },
        "times_s": times,
        # Per round, from the systems' own task records: seconds after the service was
        # created until its last task was created, its first and its last task ran.
        "create_timeline_s": timelines,
    }


def summarise(result: dict[str, Any]) -> str:
    times = result["times_s"]
    cfg = result["config"]
    n, m = cfg["replicas"], cfg["scale_to"]
    label = {
        "create": f"create {n} replicas -> {n}/{n} running",
        "scale": f"scale {n} -> {m} -> {m}/{m} running",
        "replace": "container SIGKILLed -> replacement running",
        "remove": "service rm -> all containers gone",
    }
    medians: dict[str, dict[str, float]] = {"Shoal": {}, "Swarm": {}}
    ratios: dict[str, float] = {}
    lines = [
        "| step | Shoal | Swarm | Shoal/Swarm | goal |",
        "|---|---|---|---|---|",
    ]
    for step in STEPS:
        s = statistics.median(times["Shoal"][step])
        w = statistics.median(times["Swarm"][step])
        medians["Shoal"][step], medians["Swarm"][step] = s, w
        ratios[step] = s / w
        goal = GOALS.get(step)
        verdict = "-" if goal is None else f"<= {goal}x " + ("met" if s / w <= goal else "MISSED")
        lines.append(f"| {label[step]} | {s:.2f} s | {w:.2f} s | {s / w:.2f}x | {verdict} |")
    lines.append("")
    for name, rounds in result["create_timeline_s"].items():
        tl = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        lines.append(
            f"{name} create, from its own task records (medians): last task created "
            f"+{tl['tasks_created']:.2f} s, first running +{tl['first_running']:.2f} s, "
            f"last running +{tl['last_running']:.2f} s"
        )
    delays = cfg["restart_delay_s"]
    lines.append(
        f"restart delay (defaults, read back from the services): Swarm {delays['Swarm']:g} s; "
        f"Shoal {delays['Shoal']:g} s ({cfg['shoal_restart_note']})"
    )
    lines.append(
        f"medians of {cfg['rounds']} rounds; Docker {result['versions']['docker']}, "
        f"containerd {result['versions']['containerd']}, Shoal {result['versions']['shoal']}"
    )
    result["medians_s"] = medians
    result["ratios"] = ratios
    result["goals"] = GOALS
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hosts", type=int, choices=(1, 3), default=1, help="worker hosts per system")
    p.add_argument(
        "--swarm-bridge",
        choices=("default", "none"),
        default="default",
        help="--hosts 3: Docker's default bridge for tasks on no network, or none (dockerd "
        "--bridge=none: loopback only, as Shoal's)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replicas", type=int, help="replicas created (N; 20, or 60 on 3 hosts)")
    p.add_argument("--scale-to", type=int, help="replicas after the scale (M; 2N)")
    p.add_argument("--out", type=Path, help="JSON results (bench/vs_swarm/results[-3hosts].json)")
    args = p.parse_args()
    args.replicas = args.replicas or (20 if args.hosts == 1 else 60)
    args.scale_to = args.scale_to or 2 * args.replicas
    name = "results.json" if args.hosts == 1 else "results-3hosts.json"
    if args.hosts != 1 and args.swarm_bridge == "none":
        name = "results-3hosts-nobridge.json"
    args.out = args.out or REPO / "bench" / "vs_swarm" / name
    if args.rounds < 1 or not 0 < args.replicas < args.scale_to:
        p.error("need --rounds >= 1 and 0 < --replicas < --scale-to")
    if args.hosts == 1 and args.swarm_bridge != "default":
        p.error("--swarm-bridge is for --hosts 3 (the one-node dockerd has no bridge)")
    if os.geteuid() != 0:
        sys.exit("needs root (dockerd, containerd, network namespaces)")
    ensure_docker()
    existed = {q for q in DOCKERD_SIDE_PATHS if q.exists()}
    root = Path(tempfile.mkdtemp(prefix="shoal-vs-swarm-", dir="/var/tmp"))
    exit_cleanly_on_signals()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(remove_new, DOCKERD_SIDE_PATHS, existed)
        try:
            result = (run_hosts if args.hosts == 3 else run_bench)(args, root, stack)
        finally:
            ignore_signals()
    table = summarise_hosts(result) if args.hosts == 3 else summarise(result)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    left = [*mounts_under(root), *map(str, processes_mentioning(str(root)))]
    if left or root.exists():
        print(f"WARNING: left behind under {root}: {left}")


if __name__ == "__main__":
    main()
