"""Overlay data plane: iperf3 between two tasks on different hosts, through Shoal's
overlay, against a hand-built kernel VXLAN pair over the same underlay, in one run.

    python -m bench.overlay.run [--seconds 5] [--rounds 3]

Three netns hosts on a private bridge (underlay MTU 1500); a manager on h0 and
agents on h1 and h2 (simulated runtime: the overlay — namespaces, veths,
bridges, VXLAN devices, peer entries — is the real thing). The hand-built pair
is a VXLAN device with an address, directly in h1 and h2, programmed with `ip`
and `bridge` (the ANCHORS set-up). Reports throughput and RTT for the raw
underlay, the hand-built VXLAN and Shoal's overlay, and Shoal / hand-built
ratios. Everything is torn down at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.guard import exit_cleanly_on_signals
from shoal.lab.cluster import Cluster
from shoal.lab.hosts import Host, Hosts
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

HAND_VNI = 999
HAND_NET = "10.250.250"


def in_netns(path: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={path}", *argv]


def iperf(server: list[str], client: list[str], target: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client to server."""
    srv = subprocess.Popen(
        [*server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(50):
            out = subprocess.run(
                [*client, "iperf3", "-c", target, "-t", str(seconds), "-J"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            )
            report = json.loads(out.stdout or "{}")
            received = report.get("end", {}).get("sum_received")
            if out.returncode == 0 and received:
                return float(received["bits_per_second"]) / 1e9
            time.sleep(0.1)  # the server is not listening yet
        raise RuntimeError(f"iperf3 failed: {report.get('error') or out.stderr}")
    finally:
        srv.kill()
        srv.wait()


def rtt_ms(client: list[str], target: str, count: int = 20) -> float:
    out = subprocess.run(
        [*client, "ping", "-c", str(count), "-i", "0.05", "-q", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # rtt min/avg/max/mdev = 0.041/0.052/0.090/0.011 ms
    line = next(x for x in out.stdout.splitlines() if "min/avg" in x)
    return float(line.split("=")[1].split("/")[1])


def hand_built(hosts: Hosts) -> None:
    """A plain kernel VXLAN pair with addresses, like ANCHORS' baseline."""
    a, b = hosts[1], hosts[2]
    for me, peer, n in ((a, b, 1), (b, a, 2)):
        me.run(
            "ip",
            "link",
            "add",
            "vxhand",
            "type",
            "vxlan",
            "id",
            str(HAND_VNI),
            "dstport",
            "4789",
            "local",
            me.addr,
            "nolearning",
        )
        me.run("ip", "link", "set", "vxhand", "mtu", "1450", "up")
        me.run("ip", "addr", "add", f"{HAND_NET}.{n}/24", "dev", "vxhand")
        # The usual hand-made set-up: unknown destinations flood to the one peer.
        me.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxhand", "dst", peer.addr)


def measure(
    name: str, server: list[str], client: list[str], target: str, seconds: int, rounds: int
) -> dict[str, float]:
    gbits = [iperf(server, client, target, seconds) for _ in range(rounds)]
    return {
        "path": name,
        "gbit_s": round(statistics.median(gbits), 2),  # type: ignore[dict-item]
        "rtt_ms": round(rtt_ms(client, target), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--bridge-nf-off",
        action="store_true",
        help="turn off br_netfilter's iptables hooks in the (bench's own) hosts",
    )
    args = p.parse_args()
    exit_cleanly_on_signals()
    root = Path(tempfile.mkdtemp(prefix="shoal-bench-overlay-"))
    with Hosts(3) as hosts:
        c = Cluster(hosts, root)
        c.start_manager()
        for h in (hosts[1], hosts[2]):
            c.start_worker(h, "--runtime", "simulated")
        c.control().CreateNetwork(
            api.CreateNetworkRequest(
                spec=pb.NetworkSpec(annotations=pb.Annotations(name="bench"), driver="overlay")
            )
        )
        spec = pb.ServiceSpec(annotations=pb.Annotations(name="iperf"))
        spec.task.container.image = "registry.local/iperf:1"
        spec.replicated.replicas = 2
        spec.task.networks.add(target="bench")
        c.control().CreateService(api.CreateServiceRequest(spec=spec))
        tasks = c.wait_running("iperf", 2)
        a, b = sorted(tasks, key=lambda t: hosts.hosts.index(c.workers[t.node_id]))
        assert a.node_id != b.node_id, "both tasks on one host"
        ns = {t.id: f"/var/run/netns/shoal-{t.node_id[:10]}-{t.id[:16]}" for t in tasks}
        b_ip = b.networks[0].addresses[0].split("/")[0]
        hand_built(hosts)
        if args.bridge_nf_off:
            for h in (hosts[1], hosts[2]):
                for fam in ("iptables", "ip6tables", "arptables"):
                    h.run("sysctl", "-qw", f"net.bridge.bridge-nf-call-{fam}=0", check=False)
        h1: Host = hosts[1]
        h2: Host = hosts[2]
        results = [
            measure(
                "underlay (veth + bridge)", h2.cmd(), h1.cmd(), h2.addr, args.seconds, args.rounds
            ),
            measure(
                "hand-built kernel VXLAN",
                h2.cmd(),
                h1.cmd(),
                f"{HAND_NET}.2",
                args.seconds,
                args.rounds,
            ),
            measure(
                "Shoal overlay (task to task)",
                in_netns(ns[b.id]),
                in_netns(ns[a.id]),
                b_ip,
                args.seconds,
                args.rounds,
            ),
        ]
        c.control().RemoveService(api.RemoveServiceRequest(ref="iperf"))
    hand, shoal = results[1], results[2]
    print("| path | throughput (Gbit/s) | RTT (ms) |\n|---|---|---|")
    for r in results:
        print(f"| {r['path']} | {r['gbit_s']} | {r['rtt_ms']} |")
    print(
        f"\nShoal / hand-built VXLAN: throughput {shoal['gbit_s'] / hand['gbit_s']:.2f}x, "
        f"RTT {shoal['rtt_ms'] / hand['rtt_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
