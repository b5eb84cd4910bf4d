"""The service-networking test cluster: netns hosts h0 (manager, registry), h1-h3
(agents with real containers), h4 outside (the "internet", published-port client).
One Bed serves the module; `tb` clears it after each test; the module's end checks
that nothing of the data plane is left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Host, Hosts
from shoal.lab.procs import swarmctl
from shoal.lab.registry import Registry
from shoal.lab.svcprobe import host_get, links, nft_tables
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.worker.runtime.containerd import ContainerdRuntime

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("h1", "h2", "h3")
# PID 1 exits on SIGTERM; httpd -v logs each client's address to the task's log.
WEB = [
    "sh", "-c",
    "trap 'exit 0' TERM; mkdir -p /www && hostname > /www/index.html && "
    "httpd -f -v -p 8080 -h /www & wait",
]  # fmt: skip
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
# Each request of the load holds its connection this long before asking: requests are
# in flight when a task is stopped (without a drain they would be cut).
HOLD_S = 0.2


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(every)
    return time.monotonic() - start


class Bed:
    def __init__(self, c: Cluster, containerd: Containerd, image: str) -> None:
        self.c = c
        self.containerd = containerd
        self.image = image
        self.nodes: dict[str, str] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.agent_args: list[str] = []
        self.outside = c.hosts[4]

    def start_agent(self, h: Host) -> None:
        self.nodes[h.name] = self.c.start_worker(h, *self.agent_args)
        self.agents[h.name] = h.procs[-1]

    def ctl(self, *args: str) -> Any:
        r = swarmctl(self.c.socket, *args, timeout=150)
        assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
        return r.json() if "--format" in args else r.out

    def create(self, name: str, *flags: str, command: list[str] = WEB) -> None:
        self.ctl(
            "service", "create", "--name", name, "--image", self.image,
            "--stop-grace-period", "2s", *flags, *command,
        )  # fmt: skip

    def running(self, service: str) -> list[pb.Task]:
        tasks = self.c.control().ListTasks(api.ListTasksRequest(service_ref=service)).tasks
        return [t for t in tasks if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING]

    def host_of(self, t: pb.Task) -> str:
        return next(h for h, n in self.nodes.items() if n == t.node_id)

    def addr(self, hostname: str) -> str:
        return next(h.addr for h in self.c.hosts.hosts if h.name == hostname)

    def exec_in(self, t: pb.Task, argv: list[str]) -> int:
        async def run() -> int:
            rt = ContainerdRuntime(str(self.containerd.socket), f"shoal-{t.node_id}")
            try:
                return await rt.exec(t.id, argv, 10)
            finally:
                await rt.close()

        return asyncio.run(run())

    def clear(self) -> None:
        for svc in self.ctl("service", "ls", "-q").split():
            self.ctl("service", "rm", svc)
        for net in self.ctl("network", "ls", "-q").split():
            self.ctl("network", "rm", net)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, containerd: Containerd) -> Iterator[Bed]:
    root = tmp_path_factory.mktemp("servicenet")
    with Hosts(5) as hosts:
        h0 = hosts[0]
        registry = Registry(host=h0.addr, port=5000, wrap=h0.cmd()).start()
        internet = None
        try:
            c = Cluster(hosts, root)
            c.start_manager()
            push = h0.run(sys.executable, "-m", "shoal.lab.images", registry.addr, cwd=str(REPO))
            b = Bed(c, containerd, push.stdout.split()[0])
            for h in hosts.hosts[1:4]:
                b.agent_args = [
                    "--containerd-socket", str(containerd.socket),
                    "--insecure-registry", registry.addr,
                    # Forwarded names go to the "internet" host only, never off the testbed.
                    "--dns-upstream", hosts[4].addr,
                ]  # fmt: skip
                b.start_agent(h)
            www = root / "internet"
            www.mkdir()
            (www / "index.html").write_text("internet")
            internet = subprocess.Popen(
                hosts[4].cmd("busybox", "httpd", "-f", "-p", "80", "-h", str(www)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            yield b
            b.clear()
            check_teardown(b)
        finally:
            if internet is not None:
                internet.kill()
                internet.wait()
            registry.stop()


def check_teardown(b: Bed) -> None:
    """No task namespace, veth, bridge, VXLAN device or nftables table is left behind."""

    def leftovers() -> list[str]:
        out = []
        for h in b.c.hosts.hosts[1:4]:
            for line in links(h.netns).splitlines():
                name = line.split(":")[1].strip().split("@")[0]
                if name.startswith(("sbr-", "svx-", "svh", "sge", "sgw0")):
                    out.append(f"{h.name}: link {name}")
            out += [f"{h.name}: {t}" for t in nft_tables(h.netns).splitlines() if t.strip()]
        prefixes = tuple(f"shoal-{node[:10]}" for node in b.nodes.values())
        out += [f"netns {n}" for n in os.listdir("/var/run/netns") if n.startswith(prefixes)]
        return out

    try:
        wait_for(lambda: not leftovers(), 30, "clean teardown", 0.2)
    except AssertionError:
        raise AssertionError(f"left behind: {leftovers()}") from None


@pytest.fixture
def tb(bed: Bed) -> Iterator[Bed]:
    yield bed
    bed.clear()


def diagnose(b: Bed, ns: str) -> str:
    """What a task's namespace and its host's network namespaces hold (for failures)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True).stdout

    out = [run("nsenter", f"--net={ns}", "nft", "list", "ruleset")]
    out.append(run("nsenter", f"--net={ns}", "ip", "route"))
    out.append(run("nsenter", f"--net={ns}", "ip", "neigh"))
    for name in sorted(os.listdir("/var/run/netns")):
        if any(name.startswith(f"shoal-{n[:10]}-n") for n in b.nodes.values()):
            out.append(
                f"== {name}\n"
                + run("nsenter", f"--net=/var/run/netns/{name}", "bridge", "fdb", "show")
            )
            out.append(run("nsenter", f"--net=/var/run/netns/{name}", "ip", "neigh"))
    return "\n".join(out)


def answering(b: Bed, host: str, port: int, ids: set[str]) -> None:
    """Waits for the first answer through a published port: RUNNING is when the server
    process started, not when it listens (nor when every host's rules caught up)."""
    wait_for(lambda: host_get(b.outside.netns, b.addr(host), port, 1) in ids, 15, f"{host}:{port}")


def by_host(tasks: list[pb.Task], b: Bed) -> Counter[str]:
    return Counter(b.host_of(t) for t in tasks)
