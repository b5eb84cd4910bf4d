"""Chaos: a 3-member etcd cluster (TLS, client certificates), two managers, three workers
each with its own containerd, real containers in several services on an overlay network,
and for the whole run one fault after another (SIGKILL of an agent, a manager, one etcd
member, a containerd; link flaps) under control-API writes and a steady HTTP load.

Checked after every fault once the cluster settled (the leader idle, every service
converged) and at the end: no slot runs two containers; after the faults stop every
service converges, every acknowledged write is in effect; after the services are removed
no container, task namespace, veth or mount is left, and after teardown nothing at all.

SHOAL_CHAOS_S sets how long faults go on (default 40 s: the CI's short form; 600 for the
long run), SHOAL_CHAOS_SEED the random seed (printed). Run: ./scripts/test -m chaos
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from shoal.lab.procs import wait_for
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from tests.chaos_bed import Bed
from tests.chaos_faults import Faults
from tests.chaos_load import Requests, Writer, observed
from tests.helpers import wait_idle

DURATION_S = float(os.environ.get("SHOAL_CHAOS_S", "40"))
SEED = int(os.environ.get("SHOAL_CHAOS_SEED", str(int(time.time()))))
SETTLE_S = 45.0  # after a healed fault, the cluster settles within this, or it is reported
GRACE_S = 3.0  # a superseded container may still be in its 1 s stop grace period

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.integration,
    pytest.mark.timeout(int(DURATION_S) + 420),
]


def converged(bed: Bed) -> dict[str, bool]:
    """Per service: every desired task runs, from the current spec."""
    infos = bed.api().ListServices(api.ListServicesRequest(), timeout=5).services
    return {
        i.service.spec.annotations.name: i.running_updated == i.desired == i.running
        and i.desired == i.service.spec.replicated.replicas
        for i in infos
    }


def stopping(bed: Bed) -> str:
    """A task being stopped (still running, out of DNS and load balancers for its
    endpoint drain): the cluster has not settled until it stopped."""
    tasks = bed.api().ListTasks(api.ListTasksRequest(), timeout=10).tasks
    n = sum(1 for t in tasks if t.desired_state > pb.RUNNING and t.status.state == pb.RUNNING)
    return f"{n} task(s) still stopping" if n else ""


def nodes_ready(bed: Bed) -> bool:
    nodes = bed.api().ListNodes(api.ListNodesRequest(), timeout=5).nodes
    workers = [n for n in nodes if n.role == pb.ROLE_WORKER]
    return len(workers) == len(bed.workers) and all(
        n.status.state == pb.NODE_READY for n in workers
    )


def leader_idle(bed: Bed, limit_s: float) -> None:
    """wait_idle on whichever manager leads (only the leader reports idle)."""
    deadline = time.monotonic() + limit_s
    while True:
        for d in [d for d in bed.managers if d.running()]:
            try:
                wait_idle(bed.stub(d), 1)
                return
            except (grpc.RpcError, AssertionError):
                pass  # not the leader, or busy, or restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader was idle within {limit_s}s")


def settle(bed: Bed, limit_s: float) -> float | str:
    """Seconds until the cluster settled (nodes ready, services converged, the leader
    idle), or what was still wrong after limit_s."""
    start, why = time.monotonic(), ""
    while time.monotonic() - start < limit_s:
        try:
            state = converged(bed)
            why = "" if nodes_ready(bed) else "a worker node not ready"
            why = why or ", ".join(f"{n} not converged" for n, ok in state.items() if not ok)
            why = why or stopping(bed)
            if not why:
                why = "no leader idle"
                leader_idle(bed, 5)
                if all(converged(bed).values()):
                    return time.monotonic() - start
        except (grpc.RpcError, AssertionError) as err:
            why = why or repr(err)[:200]  # a manager restarting: ask again
        time.sleep(0.3)
    return why


def doubles(bed: Bed) -> list[str]:
    """Slots with more than one running container (containerd's view) or more than one
    task desired and observed running (the store's)."""
    tasks = {t.id: t for t in bed.api().ListTasks(api.ListTasksRequest(), timeout=10).tasks}
    real: dict[tuple[str, int], list[str]] = {}
    for host, ctrs in bed.containers().items():
        for cid, (status, _) in ctrs.items():
            if status == "running" and cid in tasks:
                t = tasks[cid]
                # Which containers, where, and what the store says of their tasks.
                seen = f"{cid} on {host} ({desc(t.desired_state)}/{desc(t.status.state)})"
                real.setdefault((t.service_id, t.slot), []).append(seen)
    stored = Counter(
        (t.service_id, t.slot)
        for t in tasks.values()
        if t.desired_state == pb.RUNNING and t.status.state == pb.RUNNING
    )
    return [f"slot {k}: {len(c)} containers: {c}" for k, c in real.items() if len(c) > 1] + [
        f"slot {k}: {n} tasks running" for k, n in stored.items() if n > 1
    ]


def desc(state: int) -> str:
    return str(pb.TaskState.Name(state))


class Checker:
    """Runs after each healed fault: waits for the cluster to settle, then checks slots."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.recovery: list[float] = []
        self.unsettled: list[str] = []
        self.violations: list[str] = []

    def after_fault(self, what: str) -> None:
        took = settle(self.bed, SETTLE_S)
        if isinstance(took, str):
            self.unsettled.append(f"{what}: {took}")
            return
        self.recovery.append(took)
        self.check_slots(what)

    def check_slots(self, what: str) -> None:
        found = doubles(self.bed)
        if found:
            time.sleep(GRACE_S)
            found = doubles(self.bed)
        self.violations += [f"after {what}: {d}" for d in found]


def final_convergence(bed: Bed, names: list[str], limit_s: float = 120) -> dict[str, float]:
    """Seconds from now until each service converged (removed ones: are gone)."""
    start, took = time.monotonic(), {}
    while len(took) < len(names) and time.monotonic() - start < limit_s:
        try:
            state = converged(bed)
        except grpc.RpcError:
            state = {}
        for name in names:
            done = state[name] if name in state else bool(state) and observed_gone(bed, name)
            if name not in took and done:
                took[name] = round(time.monotonic() - start, 1)
        time.sleep(0.25)
    return took


def observed_gone(bed: Bed, name: str) -> bool:
    try:
        return observed(bed, name) is None
    except grpc.RpcError:
        return False


def not_in_effect(bed: Bed, writer: Writer) -> list[str]:
    """Stored states whose tasks do not run: count or GEN differs."""
    out = []
    for name in writer.expect:
        st = observed(bed, name)
        if st is None:
            continue
        tasks = bed.api().ListTasks(api.ListTasksRequest(service_ref=name), timeout=10).tasks
        up = [t for t in tasks if t.desired_state == t.status.state == pb.RUNNING]
        gens = {e for t in up for e in t.spec.container.env if e.startswith("GEN=")}
        if len(up) != st.replicas or gens != {f"GEN={st.gen}"}:
            out.append(f"{name}: stored {st}, running {len(up)} with {sorted(gens)}")
    return out


def remove_all(bed: Bed) -> float:
    """Removes every service and the network; seconds until containerd, the task
    namespaces and the workers' overlay devices are gone."""
    stub = bed.api()
    for info in stub.ListServices(api.ListServicesRequest(), timeout=10).services:
        stub.RemoveService(api.RemoveServiceRequest(ref=info.service.id), timeout=30)
    for net in stub.ListNetworks(api.ListNetworksRequest(), timeout=10).networks:
        stub.RemoveNetwork(api.RemoveNetworkRequest(ref=net.id), timeout=30)
    try:
        return wait_for(
            lambda: (
                not any(bed.containers().values())
                and not bed.task_namespaces()
                and not any(bed.worker_links().values())
            ),
            90,
            "containers, task namespaces and overlay devices gone",
            0.5,
        )
    except AssertionError:
        return float("nan")  # live_leaks() says what is left


def live_leaks(bed: Bed) -> list[str]:
    left = [f"container {h}/{c}" for h, cs in bed.containers().items() for c in cs]
    left += [f"netns {n}" for n in bed.task_namespaces()]
    for host, names in bed.worker_links().items():
        for n in names:  # with the kernel's view of it, to tell how it was left
            shown = bed.by_name[host].run("ip", "-d", "link", "show", n, check=False).stdout
            left.append(f"link {host}/{n}: {' '.join(shown.split())}")
    left += [f"mount {m}" for m in bed.task_mounts()]
    return left


def test_chaos(root: None, host_busybox: str) -> None:
    # Logs stay here if the test fails (pytest's tmp dirs rotate under parallel runs).
    state = Path(tempfile.mkdtemp(prefix="shoal-chaos-", dir="/var/tmp"))
    print(f"\nchaos: {DURATION_S:.0f}s of faults, seed {SEED}, logs in {state}")
    bed = Bed(state)
    try:
        report, leaks = run(bed)
    finally:
        bed.close()
    leftovers = bed.leftovers()
    print(f"left after teardown: {leftovers or 'nothing'}")
    assert not leaks, f"left after removing every service: {leaks}"
    assert not leftovers, f"left after teardown: {leftovers}"
    assert report["request success ratio"] > 0.5, report
    if not report["unsettled after a fault"]:
        shutil.rmtree(state)  # else kept: the logs say why


def run(bed: Bed) -> tuple[dict[str, object], list[str]]:
    bed.build()
    writer = Writer(bed, SEED)
    writer.setup()
    started = settle(bed, 120)
    assert not isinstance(started, str), f"services did not start: {started}"
    checker = Checker(bed)
    faults = Faults(bed, SEED, checker.after_fault)
    requests = Requests(bed)
    requests.thread.start()
    writer.thread.start()
    faults.start()
    faults.stop.wait(DURATION_S)
    faults.finish()
    writer.stop.set()
    writer.thread.join()
    # The faults are healed: from here on the cluster must converge.
    conv = final_convergence(bed, list(writer.expect))
    requests.stop.set()
    requests.thread.join()
    report: dict[str, object] = {
        "faults injected": dict(faults.injected),
        "recovery after each fault (s)": _spread(checker.recovery),
        "unsettled after a fault": checker.unsettled,
        "convergence per service after the last fault (s)": conv,
        "writes": dict(writer.outcomes),
        "requests": dict(requests.results),
        "request success ratio": round(requests.ratio(), 3),
    }
    print("\n".join(["chaos figures:", *(f"  {k}: {v}" for k, v in report.items())]))
    print("faults:\n  " + "\n  ".join(faults.log))
    leader_idle(bed, 60)
    checker.check_slots("the faults stopped")
    lost, idle = writer.lost(), not_in_effect(bed, writer)
    assert not faults.errors, faults.errors
    assert not checker.violations, checker.violations
    assert len(conv) == len(writer.expect), f"not converged: {set(writer.expect) - set(conv)}"
    assert not lost, f"acknowledged writes lost: {lost}"
    assert not idle, f"stored but not in effect: {idle}"
    removed_s = remove_all(bed)
    leaks = live_leaks(bed)
    print(f"  services removed, containers gone in {removed_s:.1f}s; leaks: {len(leaks)}")
    return report, leaks


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    s = sorted(values)
    return f"n={len(s)} median {s[len(s) // 2]:.1f} max {s[-1]:.1f}"
