"""VXLAN overlay across netns hosts (simulated runtime: the namespaces are real).

The tasks' network namespaces, veths, bridges, VXLAN devices and peer
entries are the real thing; only the container process is simulated, so the
test runs servers and clients (the host's busybox) inside the tasks'
namespaces itself.
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
from shoal.lab.hosts import Hosts
from shoal.lab.probe import FetchError, Servers, fetch, ip_of, task_netns
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

from .conftest import Bounds
from .helpers import service_spec, wait_idle

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("root", "host_busybox")]


def wait_reachable(client: pb.Task, server: pb.Task, limit_s: float = 10) -> float:
    start = time.monotonic()
    why = ""
    while time.monotonic() - start < limit_s:
        try:
            if fetch(client, server, 1) == server.id:
                return time.monotonic() - start
            why = "another page"
        except FetchError as err:
            why = str(err)
    raise AssertionError(f"{ip_of(server)} not reachable from {ip_of(client)}: {why}")


# How a GET fails when no packet can get through: no route, or no answer in time.
# (Not "connection refused", which a reachable host answers; not nsenter's or wget's
# own failures, which would make an isolation check pass on a broken probe.)
BLOCKED = re.compile(r"Network is unreachable|No route to host|no answer within")


def check_isolated(c: Cluster, servers: Servers, tasks: list[pb.Task]) -> None:
    """Tasks on another network reach each other (the probe works there) and none of
    `tasks`, nor the other way round."""
    c.control().CreateService(api.CreateServiceRequest(spec=on_network("other", 2, "back")))
    strangers = c.wait_running("other", 2)
    for t in strangers:
        servers.serve(t)
    stranger, peer = strangers
    assert ip_of(stranger).rsplit(".", 1)[0] != ip_of(tasks[0]).rsplit(".", 1)[0]
    wait_reachable(stranger, peer)  # the positive control
    for t in tasks:
        for client, server in ((stranger, t), (t, stranger)):
            with pytest.raises(FetchError) as err:
                fetch(client, server, 1)
            assert BLOCKED.search(str(err.value)), f"failed, but not blocked: {err.value}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Hosts(3) as hosts:
        c = Cluster(hosts, tmp_path)
        c.start_manager()
        for h in (hosts[1], hosts[2]):
            c.start_worker(h, "--runtime", "simulated")
        yield c


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


def network(c: Cluster, name: str, subnet: str = "") -> pb.Network:
    return (
        c.control()
        .CreateNetwork(
            api.CreateNetworkRequest(
                spec=pb.NetworkSpec(
                    annotations=pb.Annotations(name=name), driver="overlay", subnet=subnet
                )
            )
        )
        .network
    )


def on_network(name: str, replicas: int, net: str) -> pb.ServiceSpec:
    spec = service_spec(name, replicas)
    spec.task.networks.add(target=net)
    return spec


def network_ns(c: Cluster, host_index: int, vni: int) -> str:
    """Where a network's bridge and VXLAN device live on a host: a namespace of their own."""
    node = next(n for n, h in c.workers.items() if h is c.hosts[host_index])
    return f"/var/run/netns/shoal-{node[:10]}-n{vni}"


def in_network_ns(c: Cluster, host_index: int, vni: int, *argv: str) -> str:
    path = network_ns(c, host_index, vni)
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True
    ).stdout


def vxlan_entries(c: Cluster, host_index: int, vni: int) -> tuple[set[str], set[str]]:
    fdb = in_network_ns(c, host_index, vni, "bridge", "fdb", "show", "dev", f"svx-{vni}")
    neigh = in_network_ns(c, host_index, vni, "ip", "neigh", "show", "dev", f"svx-{vni}")
    macs = {line.split()[0] for line in fdb.splitlines() if " dst " in line}
    ips = {line.split()[0] for line in neigh.splitlines() if line.strip()}
    return macs, ips


def test_cross_host_reachability_isolation_and_cleanup(cluster: Cluster, servers: Servers) -> None:
    c = cluster
    front = network(c, "front")
    back = network(c, "back")
    c.control().CreateService(api.CreateServiceRequest(spec=on_network("web", 4, "front")))
    tasks = c.wait_running("web", 4)
    assert len({t.node_id for t in tasks}) == 2
    for t in tasks:
        assert os.path.exists(task_netns(t))
        servers.serve(t)
    # Every task reaches every other one by overlay IP over TCP, across hosts too.
    for a in tasks:
        for b in tasks:
            if a.id != b.id:
                wait_reachable(a, b)

    # Tasks on another network cannot reach them.
    check_isolated(c, servers, tasks)

    # Peers are programmed statically: one FDB + neighbour entry per remote task.
    for i in (1, 2):
        macs, ips = vxlan_entries(c, i, front.vni)
        node = next(n for n, h in c.workers.items() if h is c.hosts[i])
        remote = [t for t in tasks if t.node_id != node]
        assert macs == {t.networks[0].mac for t in remote}
        assert ips == {ip_of(t) for t in remote}

    # Each network's devices live in a namespace of their own, none in the host's.
    for i in (1, 2):
        assert f"svx-{front.vni}" not in c.hosts[i].run("ip", "-o", "link").stdout
        assert f"svx-{front.vni}" in in_network_ns(c, i, front.vni, "ip", "-o", "link")

    # Scale down: entries and namespaces of removed tasks are gone on every host.
    svc = c.control().GetService(api.GetServiceRequest(ref="web")).service.service
    spec = pb.ServiceSpec()
    spec.CopyFrom(svc.spec)
    spec.replicated.replicas = 1
    c.control().UpdateService(
        api.UpdateServiceRequest(ref="web", version=svc.meta.version, spec=spec)
    )
    (kept,) = c.wait_running("web", 1)
    removed = [t for t in tasks if t.id != kept.id]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        gone = all(not os.path.exists(task_netns(t)) for t in removed)
        entries = [vxlan_entries(c, i, front.vni) for i in (1, 2)]
        stale = any(t.networks[0].mac in macs for macs, _ in entries for t in removed)
        if gone and not stale:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("namespaces or peer entries of removed tasks remain")

    # The last task of a network leaves a host: its bridge and vxlan go too.
    c.control().RemoveService(api.RemoveServiceRequest(ref="web"))
    c.control().RemoveService(api.RemoveServiceRequest(ref="other"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        spaces = [network_ns(c, i, vni) for i in (1, 2) for vni in (front.vni, back.vni)]
        if not any(os.path.exists(path) for path in spaces):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("overlay devices remain after the last task left")


def test_convergence_and_agent_restart(cluster: Cluster, servers: Servers, bounds: Bounds) -> None:
    c = cluster
    front = network(c, "front")
    c.control().CreateService(api.CreateServiceRequest(spec=on_network("web", 2, "front")))
    tasks = c.wait_running("web", 2)
    a, b = sorted(tasks, key=lambda t: t.node_id)
    assert a.node_id != b.node_id
    for t in tasks:
        servers.serve(t)
    wait_reachable(a, b)

    # A new task starts on some host: how soon can a task elsewhere reach it?
    svc = c.control().GetService(api.GetServiceRequest(ref="web")).service.service
    spec = pb.ServiceSpec()
    spec.CopyFrom(svc.spec)
    spec.replicated.replicas = 3
    c.control().UpdateService(
        api.UpdateServiceRequest(ref="web", version=svc.meta.version, spec=spec)
    )
    running = c.wait_running("web", 3)
    (new,) = [t for t in running if t.id not in {a.id, b.id}]
    servers.serve(new)
    client = a if a.node_id != new.node_id else b
    took = wait_reachable(client, new, limit_s=10)
    bounds.check(took, 1.0, "overlay convergence: reachable after the task ran")

    # Kill -9 the agent of one host, plant stale state, restart it.
    node_b, host_b = b.node_id, c.workers[b.node_id]
    agent = next(p for p in host_b.procs if p.poll() is None)
    agent.kill()
    agent.wait()
    b_index = c.hosts.hosts.index(host_b)
    in_network_ns(
        c, b_index, front.vni,
        "bridge", "fdb", "add", "02:de:ad:be:ef:01", "dev", f"svx-{front.vni}",
        "dst", "172.29.0.99", "self", "permanent",
    )  # fmt: skip
    in_network_ns(
        c, b_index, front.vni,
        "ip", "neigh", "add", "10.0.99.99", "lladdr", "02:de:ad:be:ef:01",
        "dev", f"svx-{front.vni}", "nud", "permanent",
    )  # fmt: skip
    stale_ns = f"shoal-{node_b[:10]}-deadbeefdeadbeef"
    subprocess.run(["ip", "netns", "add", stale_ns], check=True)
    # Connectivity of running tasks survives the agent being away.
    assert fetch(a, b) == b.id
    c.start_worker(host_b, "--runtime", "simulated")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        macs, ips = vxlan_entries(c, c.hosts.hosts.index(host_b), front.vni)
        if (
            "02:de:ad:be:ef:01" not in macs
            and "10.0.99.99" not in ips
            and not os.path.exists(f"/var/run/netns/{stale_ns}")
        ):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("stale entries planted before the restart were not removed")
    check_after_restart(c, servers, {a.id, b.id, new.id})


def check_after_restart(c: Cluster, servers: Servers, served: set[str]) -> None:
    """Whatever the leader decided while the agent was away (a kill -9 ends its session
    at once, so its tasks may have moved), the service's running tasks reach each other
    and the namespaces of its tasks that stopped are gone."""
    wait_idle(c.control())
    running = c.wait_running("web", 3)
    for t in running:
        if t.id not in served:
            servers.serve(t)
    for x in running:
        for y in running:
            if x.id != y.id:
                wait_reachable(x, y)
    tasks = c.control().ListTasks(api.ListTasksRequest(service_ref="web")).tasks
    stopped = [t for t in tasks if t.desired_state != pb.RUNNING and t.node_id]
    print(f"after the agent restart: {len(stopped)} task(s) replaced")
    for t in stopped:
        deadline = time.monotonic() + 15
        while os.path.exists(task_netns(t)):
            assert time.monotonic() < deadline, f"namespace of stopped task {t.id} remains"
            time.sleep(0.1)
