"""Hollow-node scale benchmark: N agents (simulated runtime), M tasks, real etcd, mTLS.

    python -m bench.scale.run                      # the default matrix
    python -m bench.scale.run --nodes 1000 --tasks 10000

Measures, per (nodes, tasks): tasks/s from create to all running, p50/p99
create->running latency per task, etcd writes per task (etcd's own counters),
manager CPU seconds and peak RSS (and its CPU per second at rest, measured after
the joins, before the creates), agent CPU per node. Everything it starts is
stopped and its temp dir removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from bench.guard import exit_cleanly_on_signals
from bench.scale.joins import join_figures
from bench.scale.observe import (
    EventLag,
    PageWatch,
    messages_per_task,
    observe_figures,
    session_messages,
)
from bench.scale.plot import plot
from bench.scale.profile import start_profilers, stop_profilers, top_frames
from shoal.lab.procs import free_manager_addr
from shoal.manager.etcd_embedded import EmbeddedEtcd, free_port
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The manager at rest, measured between the joins and the creates.
REST_SETTLE_S = 5.0
REST_WINDOW_S = 10.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def etcd_counters(etcd: EmbeddedEtcd) -> dict[str, float]:
    """etcd's own counters, over its TLS port with the manager's client certificate."""
    tls = etcd.tls
    ctx = ssl.create_default_context(cafile=str(tls.ca_file))
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5, context=ctx) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for name in (
        "etcd_mvcc_put_total",
        "etcd_mvcc_delete_total",
        "etcd_mvcc_txn_total",
        "etcd_mvcc_range_total",
    ):
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def raise_fd_limit(nodes: int) -> None:
    """Open files for the manager (a connection per agent, etcd's) and the hollow
    processes (their agents' channels and state files), which inherit the limit.
    Raised to the hard limit, and past it when allowed."""
    want, need = nodes * 2 + 4096, nodes + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if hard < need:
            raise RuntimeError(
                f"{nodes} hollow nodes need ~{need} open files in the manager; the hard "
                f"limit is {hard} (raise it: ulimit -Hn, or LimitNOFILE)"
            ) from None


def join_limit(nodes: int) -> float:
    """Seconds for every node to join: certificates are signed a few at a time, at
    tens of ms each on a loaded machine (1,000 nodes took 17-34 s here)."""
    return max(300.0, nodes * 0.15)


# Lists of 50,000 tasks are bigger than gRPC's default 4 MB per message.
CLIENT_OPTIONS = [("grpc.max_receive_message_length", 512 << 20)]


def wait_socket(
    sock: Path, manager: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> api_grpc.ControlStub:
    stub = api_grpc.ControlStub(grpc.insecure_channel(f"unix://{sock}", options=CLIENT_OPTIONS))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manager.poll() is not None:
            tail = log.read_text().strip().splitlines()[-5:]
            raise RuntimeError("manager exited:\n" + "\n".join(tail))
        try:
            stub.GetCluster(api.GetClusterRequest(), timeout=2)
            return stub
        except grpc.RpcError:
            time.sleep(0.1)
    raise RuntimeError("manager did not start")


def code_env(code: Path | None) -> dict[str, Any]:
    """Popen arguments that run another checkout's code: `python -m` puts the working
    directory before PYTHONPATH, so both are that checkout."""
    if code is None:
        return {}
    return {"env": {**os.environ, "PYTHONPATH": str(code)}, "cwd": code}


def start_manager(
    root: Path, etcd: EmbeddedEtcd, http_port: int, code: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    addr = free_manager_addr()
    manager = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.daemon",
            "--log-level",
            "warning",
            "manager",
            "--state-dir",
            str(root / "manager"),
            "--listen-addr",
            addr,
            *etcd.manager_args(),
            "--http-addr",
            f":{http_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "manager.log", "wb"),
        **code_env(code),
    )
    return manager, addr


def start_hollows(
    root: Path, nodes: int, procs: int, addr: str, token: str, code: Path | None
) -> list[subprocess.Popen[bytes]]:
    """`procs` processes that share the `nodes` hollow agents between them."""
    per = -(-nodes // procs)
    hollows = []
    for i in range(procs):
        count = min(per, nodes - i * per)
        if count <= 0:
            break
        hollows.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.scale.hollow",
                    "--count",
                    str(count),
                    "--first",
                    str(i * per),
                    "--state-root",
                    str(root / "nodes"),
                    "--join-addr",
                    addr,
                    "--join-token",
                    token,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(root / f"hollow-{i}.log", "wb"),
                **code_env(code),
            )
        )
    return hollows


def wait_ready_workers(
    ctl: api_grpc.ControlStub, nodes: int, hollows: list[subprocess.Popen[bytes]], limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    ready = 0
    while True:
        try:
            ready = sum(
                1
                for n in ctl.ListNodes(api.ListNodesRequest(), timeout=60).nodes
                if n.status.state == pb.NODE_READY and n.role == pb.ROLE_WORKER
            )
        except grpc.RpcError as err:
            # A manager swamped by joins may answer "cache behind": ask again.
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        if ready == nodes:
            return
        dead = [h.args[h.args.index("--first") + 1] for h in hollows if h.poll() is not None]
        if dead:
            raise RuntimeError(
                f"hollow processes (first node {dead}) exited; {ready}/{nodes} ready"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready}/{nodes} nodes ready after {limit_s:.0f}s")
        time.sleep(0.5)


def create_and_converge(ctl: api_grpc.ControlStub, tasks: int, services: int) -> float:
    """Creates the services and follows each over WatchService; seconds until all ran."""
    per_service = tasks // services
    done: dict[str, float] = {}
    t0 = time.monotonic()

    def converge(name: str) -> None:
        stream = ctl.WatchService(api.WatchServiceRequest(ref=name), timeout=1200)
        for progress in stream:
            if progress.service.running == per_service:
                done[name] = time.monotonic()
                stream.cancel()
                return

    waiters = []
    for s in range(services):
        spec = pb.ServiceSpec(annotations=pb.Annotations(name=f"svc{s}"))
        spec.task.container.image = "registry.local/hollow:1"
        spec.replicated.replicas = per_service
        ctl.CreateService(api.CreateServiceRequest(spec=spec))
        w = threading.Thread(target=converge, args=(f"svc{s}",), daemon=True)
        w.start()
        waiters.append(w)
    for w in waiters:
        w.join()
    if len(done) < services:
        raise RuntimeError(f"only {len(done)}/{services} services converged")
    return max(done.values()) - t0


def stop_all(started: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start_latencies(ctl: api_grpc.ControlStub) -> dict[str, float]:
    """p50/p99 of create -> running per running task: from the task's creation (its
    write, which may run ahead of its dispatch in a long pass), and from its service's."""
    services = ctl.ListServices(api.ListServicesRequest(), timeout=60).services
    created = {i.service.id: i.service.meta.created_at_ms for i in services}
    tasks = ctl.ListTasks(api.ListTasksRequest(), timeout=300).tasks
    running = [t for t in tasks if t.status.state == pb.RUNNING]
    out = {}
    for name, since in (
        ("", lambda t: t.meta.created_at_ms),
        ("_from_service", lambda t: created.get(t.service_id, t.meta.created_at_ms)),
    ):
        lat = sorted((t.status.timestamp_ms - since(t)) / 1000 for t in running)
        out[f"p50_latency{name}_s"] = round(statistics.median(lat), 3)
        out[f"p99_latency{name}_s"] = round(lat[int(len(lat) * 0.99) - 1], 3)
    return out


def etcd_delta(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(writes, transactions) between two readings of etcd's counters."""
    writes = (
        after["etcd_mvcc_put_total"]
        - before["etcd_mvcc_put_total"]
        + after["etcd_mvcc_delete_total"]
        - before["etcd_mvcc_delete_total"]
    )
    return writes, after["etcd_mvcc_txn_total"] - before["etcd_mvcc_txn_total"]


def rest_cpu_per_s(pid: int) -> float:
    """The manager's CPU-s per second with every node joined and nothing moving
    (heartbeats, keepalives, timers), after the joins have settled."""
    time.sleep(REST_SETTLE_S)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(REST_WINDOW_S)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def run_once(
    nodes: int,
    tasks: int,
    services: int,
    procs: int,
    keep: Path | None,
    profile: Path | None = None,
    join_limit_s: float | None = None,
    webview: bool = False,
    native: bool = False,
    code: Path | None = None,
) -> dict[str, Any]:
    """One run; `code`: another checkout whose manager and agents to run (PYTHONPATH)."""
    raise_fd_limit(nodes)
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    started: list[subprocess.Popen[bytes]] = []
    etcd = EmbeddedEtcd(root)
    try:
        asyncio.run(etcd.start())
        http_port = free_port()
        manager, addr = start_manager(root, etcd, http_port, code)
        started.append(manager)
        ctl = wait_socket(root / "manager" / "control.sock", manager, root / "manager.log")
        token = ctl.GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
        joined_at = time.monotonic()
        hollows = start_hollows(root, nodes, procs, addr, token, code)
        started += hollows
        wait_ready_workers(ctl, nodes, hollows, join_limit_s or join_limit(nodes))
        joined = join_figures(ctl, root, time.monotonic() - joined_at)
        rest = rest_cpu_per_s(manager.pid)

        before = etcd_counters(etcd)
        msgs0 = session_messages(http_port)
        m_cpu0 = cpu_seconds(manager.pid)
        h_cpu0 = sum(cpu_seconds(h.pid) for h in hollows)
        pids = {f"manager-{nodes}x{tasks}": manager.pid, f"hollow-{nodes}x{tasks}": hollows[0].pid}
        profilers = start_profilers(pids, profile, native) if profile is not None else []
        events, page = EventLag(ctl), PageWatch(http_port, webview)
        try:
            elapsed = create_and_converge(ctl, tasks, services)
            stop_profilers(profilers)
            observe = observe_figures(http_port, events, page, tasks)
        finally:
            page.close()
        after = etcd_counters(etcd)
        m_cpu = cpu_seconds(manager.pid) - m_cpu0
        msgs = messages_per_task(msgs0, session_messages(http_port), tasks)
        h_cpu = sum(cpu_seconds(h.pid) for h in hollows) - h_cpu0
        latencies = start_latencies(ctl)
        writes, txns = etcd_delta(before, after)
        return {
            "nodes": nodes,
            "tasks": tasks,
            **joined,
            "create_to_running_s": round(elapsed, 2),
            "tasks_per_s": round(tasks / elapsed),
            **latencies,
            "etcd_writes_per_task": round(writes / tasks, 2),
            "etcd_txns_per_task": round(txns / tasks, 3),
            "manager_cpu_s": round(m_cpu, 1),
            "manager_cpu_ms_per_task": round(m_cpu / tasks * 1000, 3),
            # What the fleet costs the manager with nothing moving, and the window's CPU
            # less that much of it: the per-task part, which should not grow with nodes.
            "manager_rest_cpu_per_s": round(rest, 3),
            "manager_cpu_ms_per_task_less_rest": round((m_cpu - rest * elapsed) / tasks * 1000, 3),
            **msgs,
            "manager_peak_rss_mb": round(peak_rss_mb(manager.pid)),
            "agent_cpu_ms_per_node": round(h_cpu / nodes * 1000, 1),
            "load_avg_1m": round(os.getloadavg()[0], 1),
            **observe,
        }
    finally:
        stop_all(started)
        asyncio.run(etcd.stop())
        if keep is not None:
            shutil.copytree(root, keep / root.name, ignore=shutil.ignore_patterns("etcd"))
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--tasks", type=int, nargs="*", default=[1000, 10000])
    p.add_argument(
        "--tasks-per-node",
        type=int,
        metavar="N",
        help="instead of --tasks: N tasks per node at each node count (the curve of cost by nodes)",
    )
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--procs", type=int, default=4, help="processes the hollow nodes share")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", type=Path)
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the manager and one hollow process"
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="with --profile: C frames too (gRPC, protobuf); py-spy then pauses the process",
    )
    p.add_argument("--plot", type=Path, metavar="PNG", help="tasks/s and latency by node count")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout of Shoal: each run is made first with its manager and agents",
    )
    p.add_argument(
        "--webview",
        action="store_true",
        help="keep the web view open in headless chromium during the run (it shares the "
        "cores: the throughput figures of such a run are lower)",
    )
    p.add_argument(
        "--timeout", type=float, default=3600, help="overall limit in seconds (then clean up, exit)"
    )
    args = p.parse_args()
    exit_cleanly_on_signals(args.timeout)
    results = []
    with ExitStack():
        for n in args.nodes:
            for t in [n * args.tasks_per_node] if args.tasks_per_node else args.tasks:
                for code in [args.baseline, None] if args.baseline else [None]:
                    r = {"code": "this" if code is None else "baseline"}
                    r |= run_once(
                        n,
                        t,
                        args.services,
                        args.procs,
                        args.keep_logs,
                        args.profile if code is None else None,
                        webview=args.webview,
                        native=args.native,
                        code=code,
                    )
                    print(json.dumps(r), flush=True)
                    results.append(r)
                if args.profile is not None:
                    for who in ("manager", "hollow"):
                        print(f"  {who} ({n} nodes, {t} tasks), share of samples:")
                        for frame, share in top_frames(args.profile / f"{who}-{n}x{t}.txt"):
                            print(f"    {share:6.1%}  {frame}")
    keys = list(results[0])
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot([r for r in results if r["code"] == "this"], args.plot)


if __name__ == "__main__":
    main()
