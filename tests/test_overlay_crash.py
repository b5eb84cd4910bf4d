"""An agent killed -9 in the middle of wiring a task into an overlay network, on netns
hosts (simulated runtime: the namespaces and devices are real).

The kill comes at a chosen step (tests/crashhook): a veth pair made but not yet moved
out of the host's namespace, or moved half-way. The restarted agent must find what
the dead one left by the devices' names: nothing of a network removed while it was
down may stay, and a task wired again must really have its interface.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.hosts import Host, Hosts
from shoal.lab.probe import ip_of, task_netns
from shoal.lab.procs import wait_for
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .test_overlay import network, on_network

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root", "host_busybox")]

HOOK = Path(__file__).resolve().parent / "crashhook"
# Names the overlay driver gives devices: a network's VXLAN device and bridge, a task's
# veth ends (before they are moved, both are in the host's namespace).
OVERLAY_PREFIXES = ("svx-", "sbr-", "svh", "svp")
CLEAN_S = 15.0  # the restarted agent has its reconcile done well within this


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Hosts(2) as hosts:
        c = Cluster(hosts, tmp_path)
        c.start_manager()
        yield c


def overlay_links(host: Host) -> list[str]:
    """Overlay devices in the host's own namespace (where none should stay)."""
    text = host.run("ip", "-o", "link").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in text.splitlines()]
    return [n for n in names if n.startswith(OVERLAY_PREFIXES)]


def node_namespaces(node_id: str) -> list[str]:
    """The node's task and network namespaces."""
    return [n for n in os.listdir("/var/run/netns") if n.startswith(f"shoal-{node_id[:10]}-")]


def start_doomed_agent(
    c: Cluster, host: Host, monkeypatch: pytest.MonkeyPatch, before_move: int
) -> str:
    """An agent that kills itself just before its `before_move`th device move."""
    with monkeypatch.context() as m:
        m.setenv("PYTHONPATH", f"{HOOK}:{os.environ.get('PYTHONPATH', '')}")
        m.setenv("SHOAL_TEST_KILL_BEFORE_MOVE", str(before_move))
        return c.start_worker(host, "--runtime", "simulated")


def wait_killed(host: Host) -> None:
    agent = host.procs[-1]
    try:
        code = agent.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the agent did not reach its crash point") from None
    assert code == -9, f"the agent ended with {code}, not at its crash point"


def scale(c: Cluster, name: str, replicas: int) -> None:
    svc = c.control().GetService(api.GetServiceRequest(ref=name)).service.service
    spec = pb.ServiceSpec()
    spec.CopyFrom(svc.spec)
    spec.replicated.replicas = replicas
    c.control().UpdateService(
        api.UpdateServiceRequest(ref=name, version=svc.meta.version, spec=spec)
    )


def web_on_front(c: Cluster) -> None:
    network(c, "front")
    c.control().CreateService(api.CreateServiceRequest(spec=on_network("web", 1, "front")))


def wait_clean(host: Host, node_id: str) -> None:
    """No overlay device in the host's namespace, no namespace of the node's."""
    wait_for(
        lambda: not overlay_links(host) and not node_namespaces(node_id),
        CLEAN_S,
        f"overlay devices and namespaces gone: {overlay_links(host)} {node_namespaces(node_id)}",
        0.1,
    )


def remove_all(c: Cluster) -> None:
    c.control().RemoveService(api.RemoveServiceRequest(ref="web"))
    c.control().RemoveNetwork(api.RemoveNetworkRequest(ref="front"))


def test_killed_before_veth_moved_then_network_removed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, host = cluster, cluster.hosts[1]
    # Move 1 is the new network's VXLAN device, 2 the task's veth end: the agent dies
    # with the pair made in the host's namespace, before the task's record is written.
    node = start_doomed_agent(c, host, monkeypatch, before_move=2)
    web_on_front(c)
    wait_killed(host)
    left = overlay_links(host)
    assert any(n.startswith("svh") for n in left), f"not killed mid-wiring: {left}"
    assert any(re.fullmatch(r"shoal-\w+-n\d+", n) for n in node_namespaces(node))

    # While the agent is down its task's service and network go away.
    remove_all(c)
    start = time.monotonic()
    c.start_worker(host, "--runtime", "simulated")
    wait_clean(host, node)
    print(f"left by the killed agent: gone {time.monotonic() - start:.2f}s after its restart")


def test_killed_between_veth_moves_task_wired_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, host = cluster, cluster.hosts[1]
    # Task 1 takes moves 1-3 and runs (recorded: its network stays on the restart);
    # task 2's veth end goes into the network's namespace (4), the agent dies before
    # the other end leaves the host's (5).
    node = start_doomed_agent(c, host, monkeypatch, before_move=5)
    web_on_front(c)
    c.wait_running("web", 1)
    scale(c, "web", 2)
    wait_killed(host)
    assert any(n.startswith("svp") for n in overlay_links(host)), "not killed between moves"

    c.start_worker(host, "--runtime", "simulated")
    running = c.wait_running("web", 2)
    for t in running:
        shown = subprocess.run(
            ["nsenter", f"--net={task_netns(t)}", "ip", "-o", "addr", "show", "eth0"],
            capture_output=True,
            text=True,
        )
        assert f" {ip_of(t)}/" in shown.stdout, f"task {t.id} not wired: {shown.stderr}"
    wait_for(lambda: not overlay_links(host), CLEAN_S, f"host clean: {overlay_links(host)}")

    remove_all(c)
    wait_clean(host, node)
