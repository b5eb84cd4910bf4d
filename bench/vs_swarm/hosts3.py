"""The three-host mode of the Shoal vs Docker Swarm benchmark (`run.py --hosts 3`).

Hosts are network namespaces on a private underlay bridge in a namespace of its own
(shoal/lab/hosts.py), named after the run: `registry`, Shoal's `manager` and workers
`w1`-`w3`, Swarm's `d1`-`d3`. Each worker host has a containerd of its own; Shoal's
agent or Docker's dockerd runs on it. One registry on the underlay serves both the
busybox image shoal/lab/images.py builds (the digest is checked on every host). Each
system first runs a warm-up service with two replicas per host (every host pulls).

Per round, both systems, alternating which goes first, through their own CLIs:

  create     service create, N replicas                 -> N/N running
  scale      N -> M                                     -> M/M running
  host lost  a worker host's underlay link down, its agent / dockerd SIGKILLed
             (containerd and containers live on, cut off) -> M running, none there
  (restore)  link up, agent / dockerd started again      -> node ready, its old
             containers gone (reported, not compared)
  remove     service rm                                 -> no container on any host

The lost host is w2/d2, then w3/d3 (d1 is Swarm's manager; losing it is another
benchmark). Swarm: `docker service create|scale -d` on the manager's socket and
`docker service ps|ls`, `docker ps -a` on each host polled every 100 ms. Shoal:
`swarmctl service create|scale` (waits over the manager's watch), the host loss
followed over that watch, removal by polling `ctr containers ls` on each host.

The dockerds keep Docker's defaults but for their own paths, sockets and
containerd: a task on no network goes on the default bridge (a veth into docker0).
`--swarm-bridge none` gives them `--bridge=none`: loopback only, as Shoal's tasks on
no network get, to see what that part costs Swarm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

from bench.vs_swarm.common import COMMAND, POLL_S, REPO, run_record
from bench.vs_swarm.shoal_hosts import ShoalHosts
from bench.vs_swarm.swarm_hosts import SwarmHosts
from shoal.lab.hosts import NETNS_DIR, Hosts
from shoal.lab.images import build_image
from shoal.lab.registry import Registry
from shoal.lab.sweep import mounts_under, processes_mentioning

NAMES = ["registry", "manager", "w1", "w2", "w3", "d1", "d2", "d3"]
STEPS = ("create", "scale", "host_lost", "remove")
GOAL = 0.5


class HostsSystem(Protocol):
    name: str

    def create(self, service: str, n: int) -> float: ...
    def scale(self, service: str, n: int) -> float: ...
    def host_lost(self, service: str, n: int, victim: int) -> tuple[float, float]: ...
    def restore(self, service: str, victim: int) -> float: ...
    def remove(self, service: str) -> float: ...
    def restart_delay_s(self, service: str) -> float: ...
    def timeline(self, service: str, since: float | str = "created") -> dict[str, float]: ...
    def version(self) -> str: ...


def one_round(system: HostsSystem, service: str, n: int, m: int, victim: int) -> dict[str, Any]:
    got: dict[str, float] = {"create": system.create(service, n)}
    lines = {"create": system.timeline(service)}
    got["scale"] = system.scale(service, m)
    lines["scale"] = system.timeline(service, "updated")
    got["host_lost"], fault = system.host_lost(service, m, victim)
    lines["host_lost"] = system.timeline(service, fault)
    delay = system.restart_delay_s(service)
    restore = system.restore(service, victim)
    got["remove"] = system.remove(service)
    return {"times": got, "timeline": lines, "restore_s": restore, "restart_delay_s": delay}


def run_rounds(systems: list[HostsSystem], rounds: int, n: int, m: int) -> dict[str, Any]:
    out: dict[str, Any] = {s.name: [] for s in systems}
    for r in range(rounds):
        for system in systems if r % 2 == 0 else systems[::-1]:
            got = one_round(system, f"bench{r}", n, m, 1 + r % 2)
            out[system.name].append(got)
            print(
                f"round {r + 1}/{rounds} {system.name:5}: "
                + "  ".join(f"{k} {v:.2f}s" for k, v in got["times"].items())
                + f"  (restore {got['restore_s']:.2f}s)",
                flush=True,
            )
            time.sleep(1)  # let the removed service's last work settle before the other side
    return out


def run_hosts(args: argparse.Namespace, root: Path, stack: ExitStack) -> dict[str, Any]:
    prefix = f"sh{uuid.uuid4().hex[:6]}"
    stack.callback(check_clean, root, prefix)  # runs last
    hosts = Hosts(len(NAMES), prefix=prefix, names=NAMES)
    stack.callback(hosts.close)
    reg_host = hosts[0]
    registry = Registry(
        host=reg_host.addr, port=5000, wrap=reg_host.cmd(), data_dir=root / "registry"
    )
    stack.callback(registry.stop)
    registry.start()
    # Pushed from the registry's host: the root namespace has no route to the underlay.
    push = [sys.executable, "-m", "shoal.lab.images", registry.addr, "busybox"]
    ref = reg_host.run(*push, cwd=str(REPO), timeout=300).stdout.split()[0]

    print("starting Swarm: d1-d3, each a containerd and a dockerd, one swarm", flush=True)
    # Docker's defaults put a task on no network on the default bridge (a veth into
    # docker0 each); --swarm-bridge none gives it a namespace with only loopback, as
    # Shoal does: what that part costs.
    flags = ("--bridge=none",) if args.swarm_bridge == "none" else ()
    swarm = SwarmHosts([hosts[5], hosts[6], hosts[7]], root / "docker", prefix, flags)
    stack.callback(swarm.stop)
    swarm.start(registry.addr)
    print("starting Shoal: a manager, w1-w3 each a containerd and an agent", flush=True)
    shoal = ShoalHosts(hosts, hosts[1], [hosts[2], hosts[3], hosts[4]], root / "shoal",
                       hosts.prefix)  # fmt: skip
    stack.callback(shoal.stop)
    shoal.start_hosts(registry.addr)

    expected = build_image()["manifest_digest"].decode()
    digests = {"Swarm": swarm.load(ref), "Shoal": shoal.load(ref)}
    assert set(digests.values()) == {expected}, f"image digests differ: {digests}, {expected}"
    print(f"image {expected[:19]}... on every host of both (from {ref})", flush=True)

    n, m = args.replicas, args.scale_to
    per_round = run_rounds([shoal, swarm], args.rounds, n, m)
    return {
        **run_record(swarm.version(), shoal.version()),
        "config": {
            "hosts": 3,
            "rounds": args.rounds,
            "replicas": n,
            "scale_to": m,
            "command": COMMAND,
            "swarm_poll_interval_s": POLL_S,
            "image_digest": expected,
            "swarm_bridge": args.swarm_bridge,
            "swarm_task_network": swarm.network_mode,
        },
        # Per system, per round: the timed steps, each step's timeline from the system's
        # own task records (seconds from the service's creation, its update, the fault
        # until the last new task was created, the first and last new task ran), the
        # restore time and the restart delay (defaults, read back from the service).
        "rounds": per_round,
    }


def check_clean(root: Path, prefix: str) -> None:
    """Runs after the teardown (it is registered before it): says what was left."""
    netns = [n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)] if NETNS_DIR.exists() else []
    runs = [str(p) for p in Path("/run").glob(f"{prefix}-*")]
    left = [
        *netns,
        *runs,
        *mounts_under(root, *map(Path, runs)),
        *map(str, processes_mentioning(str(root), f"/run/{prefix}-")),
    ]
    if left:
        print(f"WARNING: left behind: {left}", flush=True)


def summarise_hosts(result: dict[str, Any]) -> str:
    cfg = result["config"]
    n, m = cfg["replicas"], cfg["scale_to"]
    label = {
        "create": f"create {n} replicas -> {n}/{n} running",
        "scale": f"scale {n} -> {m} -> {m}/{m} running",
        "host_lost": f"host lost -> {m} running on the other two",
        "remove": "service rm -> no container on any host",
    }
    lines = ["| step (3 hosts) | Shoal | Swarm | Shoal/Swarm | goal |", "|---|---|---|---|---|"]
    medians: dict[str, dict[str, float]] = {"Shoal": {}, "Swarm": {}}
    ratios: dict[str, float] = {}
    for step in STEPS:
        for name in medians:
            medians[name][step] = statistics.median(
                r["times"][step] for r in result["rounds"][name]
            )
        s, w = medians["Shoal"][step], medians["Swarm"][step]
        ratios[step] = s / w
        verdict = (
            "-" if step == "remove" else f"<= {GOAL}x " + ("met" if s / w <= GOAL else "MISSED")
        )
        lines.append(f"| {label[step]} | {s:.2f} s | {w:.2f} s | {s / w:.2f}x | {verdict} |")
    lines.append("")
    for name, rounds in result["rounds"].items():
        for step in ("create", "scale", "host_lost"):
            tl = {k: statistics.median(r["timeline"][step][k] for r in rounds)
                  for k in ("tasks_created", "first_running", "last_running")}  # fmt: skip
            lines.append(
                f"{name} {step}, own task records (medians): last new task created "
                f"+{tl['tasks_created']:.2f} s, first running +{tl['first_running']:.2f} s, "
                f"last running +{tl['last_running']:.2f} s"
            )
        restore = statistics.median(r["restore_s"] for r in rounds)
        delay = rounds[0]["restart_delay_s"]
        lines.append(f"{name}: restore (untimed step) {restore:.2f} s; restart delay {delay:g} s")
    v = result["versions"]
    lines.append(
        f"medians of {cfg['rounds']} rounds; Docker {v['docker']}, containerd "
        f"{v['containerd']}, Shoal {v['shoal']}; load average at the end "
        f"{result['machine']['loadavg_at_end'][0]:.2f}"
    )
    result["medians_s"] = medians
    result["ratios"] = ratios
    result["goal"] = GOAL
    return "\n".join(lines)
