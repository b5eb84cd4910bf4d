"""Hollow-node scale benchmark: N agents (simulated runtime), M tasks, real etcd, mTLS.

    python -m bench.scale.run                      # the default matrix
    python -m bench.scale.run --nodes 1000 --tasks 10000

Measures, per (nodes, tasks): tasks/s from create to all running, p50/p99
create->running latency per task, etcd writes per task (etcd's own counters),
manager CPU seconds and peak RSS, agent CPU per node. Everything it starts is
stopped and its temp dir removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
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

from shoal.manager.etcd_embedded import EmbeddedEtcd, free_port
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else 0.0


def etcd_counters(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
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


def wait_socket(sock: Path, timeout: float = 60) -> api_grpc.ControlStub:
    stub = api_grpc.ControlStub(grpc.insecure_channel(f"unix://{sock}"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stub.GetCluster(api.GetClusterRequest(), timeout=2)
            return stub
        except grpc.RpcError:
            time.sleep(0.1)
    raise RuntimeError("manager did not start")


def run_once(
    nodes: int, tasks: int, services: int, procs: int, keep: Path | None
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    started: list[subprocess.Popen[bytes]] = []
    etcd = EmbeddedEtcd(root)
    try:
        asyncio.run(etcd.start())
        addr = f"127.0.0.1:{free_port()}"
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
                "--etcd-endpoints",
                f"http://{etcd.endpoint}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "manager.log", "wb"),
        )
        started.append(manager)
        ctl = wait_socket(root / "manager" / "control.sock")
        token = ctl.GetCluster(api.GetClusterRequest()).cluster.join_tokens.worker
        per = -(-nodes // procs)
        joined_at = time.monotonic()
        hollows = []
        for i in range(procs):
            count = min(per, nodes - i * per)
            if count <= 0:
                break
            p = subprocess.Popen(
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
            )
            started.append(p)
            hollows.append(p)
        while True:
            ready = sum(
                1
                for n in ctl.ListNodes(api.ListNodesRequest()).nodes
                if n.status.state == pb.NODE_READY and n.role == pb.ROLE_WORKER
            )
            if ready == nodes:
                break
            if time.monotonic() - joined_at > 300:
                raise RuntimeError(f"only {ready}/{nodes} nodes ready")
            time.sleep(0.5)
        join_s = time.monotonic() - joined_at

        before = etcd_counters(etcd.client_port)
        m_cpu0 = cpu_seconds(manager.pid)
        h_cpu0 = sum(cpu_seconds(h.pid) for h in hollows)
        per_service = tasks // services
        done: dict[str, float] = {}
        t0 = time.monotonic()

        def converge(name: str) -> None:
            stream = ctl.WatchService(api.WatchServiceRequest(ref=name), timeout=600)
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
            w = threading.Thread(target=converge, args=(f"svc{s}",))
            w.start()
            waiters.append(w)
        for w in waiters:
            w.join()
        elapsed = max(done.values()) - t0
        after = etcd_counters(etcd.client_port)
        m_cpu = cpu_seconds(manager.pid) - m_cpu0
        h_cpu = sum(cpu_seconds(h.pid) for h in hollows) - h_cpu0
        latencies = sorted(
            (t.status.timestamp_ms - t.meta.created_at_ms) / 1000
            for t in ctl.ListTasks(api.ListTasksRequest(), timeout=120).tasks
            if t.status.state == pb.RUNNING
        )
        writes = (
            after["etcd_mvcc_put_total"]
            - before["etcd_mvcc_put_total"]
            + after["etcd_mvcc_delete_total"]
            - before["etcd_mvcc_delete_total"]
        )
        txns = after["etcd_mvcc_txn_total"] - before["etcd_mvcc_txn_total"]
        return {
            "nodes": nodes,
            "tasks": tasks,
            "join_s": round(join_s, 1),
            "create_to_running_s": round(elapsed, 2),
            "tasks_per_s": round(tasks / elapsed),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p99_latency_s": round(latencies[int(len(latencies) * 0.99) - 1], 3),
            "etcd_writes_per_task": round(writes / tasks, 2),
            "etcd_txns_per_task": round(txns / tasks, 3),
            "manager_cpu_s": round(m_cpu, 1),
            "manager_peak_rss_mb": round(peak_rss_mb(manager.pid)),
            "agent_cpu_ms_per_node": round(h_cpu / nodes * 1000, 1),
        }
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        asyncio.run(etcd.stop())
        if keep is not None:
            shutil.copytree(root, keep / root.name, ignore=shutil.ignore_patterns("etcd"))
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--tasks", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--procs", type=int, default=4, help="processes the hollow nodes share")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep-logs", type=Path)
    args = p.parse_args()
    results = []
    with ExitStack():
        for n in args.nodes:
            for t in args.tasks:
                r = run_once(n, t, args.services, args.procs, args.keep_logs)
                print(json.dumps(r), flush=True)
                results.append(r)
    keys = list(results[0])
    print("\n| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
