"""Service networking: requests/s and p99 through a VIP and a published port, against
a task IP directly and a hand-built nftables DNAT (this design's floor); the time
from a task RUNNING to every client's DNS; the cost of one LB change on 100 tasks.

    python -m bench.servicenet.run [--requests 3000] [--concurrency 8] [--rounds 3]

Four netns hosts: a manager on h0, agents on h1 and h2 (simulated runtime: the
namespaces, VXLAN overlay, nftables rules, resolver and egress legs are the real
thing; the server is busybox httpd started in the task's namespace), h3 an
outside client. `ab` (apache2-utils) makes the requests, a new connection each.
Everything is torn down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from shoal.lab.cluster import Cluster
from shoal.lab.hosts import Hosts
from shoal.lab.svcprobe import dns, ip_of, task_netns
from shoal.overlay import lb, netns
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

HAND_VIP = "10.254.254.254"
HAND_PORT = 9090


def ab(netns_path: str, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, p99 ms) of `ab` run in a namespace."""
    out = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ab", "-q", "-n", str(requests),
         "-c", str(concurrency), url],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+(\d+)", out, re.M)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not rps or not p99 or (failed and int(failed.group(1))):
        raise RuntimeError(f"ab failed on {url}:\n{out[-1500:]}")
    return float(rps.group(1)), float(p99.group(1))


def nft(netns_path: str, script: str) -> None:
    subprocess.run(
        ["nsenter", f"--net={netns_path}", "nft", "-f", "-"], input=script, text=True, check=True
    )


def spec(name: str, net: str, host: str, publish: int = 0) -> pb.ServiceSpec:
    s = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    s.replicated.replicas = 1
    s.task.container.image = "busybox"
    s.task.placement.constraints.append(f"node.hostname=={host}")
    s.task.networks.add(target=net)
    if publish:
        s.ports.add(published_port=publish, target_port=8080)
    return s


def set_replicas(c: Cluster, n: int) -> None:
    svc = c.control().GetService(api.GetServiceRequest(ref="web")).service.service
    s = pb.ServiceSpec()
    s.CopyFrom(svc.spec)
    s.replicated.replicas = n
    c.control().UpdateService(api.UpdateServiceRequest(ref="web", version=svc.meta.version, spec=s))


def convergence(c: Cluster, client_ns: str, rounds: int) -> list[float]:
    """Seconds from a new task's RUNNING (the agent's time in its record) to its IP in
    another node's resolver (an upper bound: polled every 2 ms)."""
    out = []
    for _ in range(rounds):
        before = {t.id for t in c.wait_running("web", 1)}
        set_replicas(c, 2)
        while True:
            new = [t for t in c.wait_running("web", 2) if t.id not in before]
            if new:
                break
        while ip_of(new[0]) not in dns(client_ns, "tasks.web")[1]:
            time.sleep(0.002)
        out.append(time.time() - new[0].status.timestamp_ms / 1000)
        set_replicas(c, 1)
        c.wait_running("web", 1)
    return out


async def lb_cost(tasks: int) -> dict[str, float]:
    """ms of one pass over `tasks` namespaces: a backend added, taken out (draining),
    gone (its connections flushed), nothing changed."""
    prefix = f"sbench{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(tasks)]
    lbs: list[lb.TaskLB] = []
    out: dict[str, float] = {}
    try:
        for n in names:
            lbs.append(await lb.TaskLB.open(netns.create(n)))
        base = [lb.Vip(f"10.255.0.{v}", "none", ("10.0.0.2", "10.0.0.3")) for v in range(2, 12)]
        added = [lb.Vip(base[0].addr, "none", ("10.0.0.2", "10.0.0.3", "10.0.0.4")), *base[1:]]
        alive = {"10.0.0.2", "10.0.0.3", "10.0.0.4"}
        await asyncio.gather(*(x.apply(base, alive) for x in lbs))
        for what, vips, up in (
            ("backend added", added, alive),
            ("backend draining", base, alive),
            ("backend gone (connections flushed)", base, alive - {"10.0.0.4"}),
            ("no change", base, alive),
        ):
            start = time.perf_counter()
            await asyncio.gather(*(x.apply(vips, up) for x in lbs))
            out[what] = (time.perf_counter() - start) * 1000
        return out
    finally:
        for x in lbs:
            x.close()
        for n in names:
            netns.remove(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-servicenet-"))
    with Hosts(4) as hosts:
        c = Cluster(hosts, root)
        c.start_manager()
        for h in (hosts[1], hosts[2]):
            c.start_worker(h, "--runtime", "simulated", "--dns-upstream", hosts[3].addr)
        c.control().CreateNetwork(api.CreateNetworkRequest(spec=pb.NetworkSpec(
            annotations=pb.Annotations(name="front"), driver="overlay")))  # fmt: skip
        c.control().CreateService(api.CreateServiceRequest(spec=spec("web", "front", "h2", 8080)))
        c.control().CreateService(api.CreateServiceRequest(spec=spec("client", "front", "h1")))
        (web,) = c.wait_running("web", 1)
        (client,) = c.wait_running("client", 1)
        www = root / "www"
        www.mkdir()
        (www / "index.html").write_text("x" * 64)
        server = subprocess.Popen(
            ["nsenter", f"--net={task_netns(web)}", "busybox", "httpd", "-f", "-p", "8080",
             "-h", str(www)],
        )  # fmt: skip
        try:
            run(c, hosts, web, client, args)
        finally:
            server.kill()
            server.wait()
    cost = asyncio.run(lb_cost(100))
    print(
        "one LB pass over 100 task namespaces: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in cost.items())
    )


def hand_built(web: pb.Task, client: pb.Task, node_ns: str) -> None:
    """The floor: a one-rule DNAT in the client's namespace, and one on the task's node."""
    cns = task_netns(client)
    nft(cns, f"table ip bench {{ chain out {{ type nat hook output priority -100; "
             f"ip daddr {HAND_VIP} dnat to {ip_of(web)}; }}\n}}\n")  # fmt: skip
    subprocess.run(
        ["ip", "-n", Path(cns).name, "route", "add", HAND_VIP, "dev", "eth0"], check=True
    )
    leg = subprocess.run(
        ["ip", "-n", Path(task_netns(web)).name, "-4", "-o", "addr", "show", "gw0"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[3].split("/")[0]  # fmt: skip
    nft(node_ns, f"table ip bench {{ chain pre {{ type nat hook prerouting priority -100; "
                 f"tcp dport {HAND_PORT} dnat to {leg}:8080; }}\n}}\n")  # fmt: skip


def run(c: Cluster, hosts: Hosts, web: pb.Task, client: pb.Task, args: argparse.Namespace) -> None:
    cns = task_netns(client)
    svc = c.control().GetService(api.GetServiceRequest(ref="web")).service.service
    vip = svc.endpoint.virtual_ips[0].addr
    h1, h2 = hosts[1], hosts[2]
    hand_built(web, client, f"/var/run/netns/{h2.netns}")
    outside = f"/var/run/netns/{hosts[3].netns}"
    paths = {
        "task IP (direct)": (cns, f"http://{ip_of(web)}:8080/"),
        "VIP": (cns, f"http://{vip}:8080/"),
        "hand-built DNAT": (cns, f"http://{HAND_VIP}:8080/"),
        "published port, node with the task": (outside, f"http://{h2.addr}:8080/"),
        "hand-built DNAT on that node": (outside, f"http://{h2.addr}:{HAND_PORT}/"),
        "published port, node without (forwarded)": (outside, f"http://{h1.addr}:8080/"),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, (ns, url) in paths.items():  # interleaved: drift hits every path alike
            results[name].append(ab(ns, url, args.requests, args.concurrency))
    med = {
        k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
        for k, v in results.items()
    }
    print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} at once, medians:")
    for name, (rps, p99) in med.items():
        print(f"  {name:42s} {rps:9.0f} req/s   p99 {p99:4.0f} ms")

    def ratio(a: str, b: str) -> str:
        return f"{med[a][0] / med[b][0]:.2f}x"

    print(
        f"  VIP / direct {ratio('VIP', 'task IP (direct)')}, VIP / hand-built "
        f"{ratio('VIP', 'hand-built DNAT')}, published / hand-built "
        f"{ratio('published port, node with the task', 'hand-built DNAT on that node')}"
    )
    conv = convergence(c, cns, args.rounds)
    print(
        f"task RUNNING -> in another node's DNS: median {statistics.median(conv) * 1000:.0f} ms "
        f"(max {max(conv) * 1000:.0f} ms, {len(conv)} rounds)"
    )


if __name__ == "__main__":
    main()
