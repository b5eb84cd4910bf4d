"""Agents with the simulated runtime against a real manager: join, sessions, security.

The simulated runtime runs nothing, so these tests are about the control plane:
tokens, certificates, mTLS roles, the dispatcher's assignments and status flow.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from shoal.lab.cluster import wait_running
from shoal.lab.procs import ManagerProcess, WorkerProcess, control, free_manager_addr
from shoal.pki.identity import NodeIdentity, channel_options
from shoal.pki.join import join_addr_for
from shoal.proto import ca_pb2, ca_pb2_grpc
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

from .conftest import Bounds
from .helpers import service_spec, wait_idle

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path, managers: list[ManagerProcess]) -> tuple[ManagerProcess, str]:
    addr = free_manager_addr()
    m = ManagerProcess(tmp_path / "m1", "--listen-addr", addr).start()
    managers.append(m)
    return m, addr


def tokens(m: ManagerProcess) -> pb.JoinTokens:
    return control(m).GetCluster(api.GetClusterRequest()).cluster.join_tokens


def start_workers(
    tmp_path: Path, m: ManagerProcess, workers: list[WorkerProcess], *names: str
) -> list[WorkerProcess]:
    """Agents on the simulated runtime, joined through m, one per hostname."""
    started = []
    for name in names:
        w = WorkerProcess(
            tmp_path / name, m.addr, tokens(m).worker, "--runtime", "simulated", "--hostname", name
        ).start(control_socket=m.socket)
        workers.append(w)
        started.append(w)
    return started


def worker_nodes(m: ManagerProcess) -> list[pb.Node]:
    """`node ls` without the managers' own entries."""
    nodes = control(m).ListNodes(api.ListNodesRequest()).nodes
    return [n for n in nodes if n.role == pb.ROLE_WORKER]


def wait_nodes_ready(m: ManagerProcess, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for n in worker_nodes(m) if n.status.state == pb.NODE_READY) >= count:
            return
        time.sleep(0.05)  # no node watch in the API: a short poll in the test only
    raise AssertionError(f"{count} nodes not ready within {timeout}s")


def wait_service(
    m: ManagerProcess,
    name: str,
    running: int,
    timeout: float = 30,
    update_state: int | None = None,
) -> None:
    """Blocks on the WatchService stream until `running` tasks run (and the rolling update
    reached `update_state`, if given)."""
    wait_running(control(m), name, running, timeout, update_state)


def test_join_run_scale_remove(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, _ = cluster
    start_workers(tmp_path, m, workers, "w1", "w2")
    wait_nodes_ready(m, 2)
    c = control(m)
    listed = c.ListNodes(api.ListNodesRequest()).nodes
    nodes = {n.description.hostname: n for n in listed if n.role == pb.ROLE_WORKER}
    assert set(nodes) == {"w1", "w2"}
    # The manager lists itself: drained (it runs no tasks), ready, and the leader.
    (me,) = [n for n in listed if n.role == pb.ROLE_MANAGER]
    assert me.id == m.node_id and me.spec.availability == pb.AVAILABILITY_DRAIN
    assert me.status.state == pb.NODE_READY
    assert me.manager_status.leader and me.manager_status.reachable

    c.CreateService(api.CreateServiceRequest(spec=service_spec("web", 4)))
    wait_service(m, "web", 4)
    tasks = [
        t
        for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
        if t.desired_state == pb.RUNNING
    ]
    per_node: dict[str, int] = {}
    for t in tasks:
        assert t.status.state == pb.RUNNING
        assert t.status.container.container_id == t.id
        per_node[t.node_id] = per_node.get(t.node_id, 0) + 1
    assert sorted(per_node.values()) == [2, 2]
    assert all(n.status.state == pb.NODE_READY for n in worker_nodes(m))

    svc = c.GetService(api.GetServiceRequest(ref="web")).service.service
    spec = pb.ServiceSpec()
    spec.CopyFrom(svc.spec)
    spec.replicated.replicas = 1
    c.UpdateService(api.UpdateServiceRequest(ref="web", version=svc.meta.version, spec=spec))
    wait_service(m, "web", 1)
    shut = [
        t
        for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
        if t.desired_state == pb.SHUTDOWN
    ]
    assert len(shut) == 3

    c.RemoveService(api.RemoveServiceRequest(ref="web"))
    # The agents stop and remove the containers; then the records go.
    stream = c.WatchService(api.WatchServiceRequest(ref=svc.id), timeout=5)
    with pytest.raises(grpc.RpcError):
        next(iter(stream))


def test_worker_restart_rejoins_as_itself(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, addr = cluster
    (w,) = start_workers(tmp_path, m, workers, "w1")
    node_id = w.node_id
    first = control(m).GetNode(api.GetNodeRequest(ref=node_id)).node
    assert w.stop() == 0
    # No token this time: only the saved certificate can get it a session.
    again = WorkerProcess(tmp_path / "w1", addr, "", "--runtime", "simulated", "--hostname", "w1")
    workers.append(again.start(control_socket=m.socket))
    # start() returned on a registration newer than the first: the manager heard the
    # new process, under the first identity, and made no second node.
    (node,) = worker_nodes(m)
    assert node.id == node_id and node.status.state == pb.NODE_READY
    assert node.status.heartbeat_at_ms > first.status.heartbeat_at_ms
    assert node.meta.created_at_ms == first.meta.created_at_ms


def _refused(tmp_path: Path, addr: str, token: str) -> str:
    w = WorkerProcess(tmp_path / "bad", addr, token, "--runtime", "simulated")
    w.start(wait_joined=False)
    assert w.wait_exit() == 1
    return w.log_text()


def test_join_refused_without_a_valid_token(
    tmp_path: Path, cluster: tuple[ManagerProcess, str]
) -> None:
    m, addr = cluster
    good = tokens(m).worker
    prefix, digest, secret = good.rsplit("-", 2)
    wrong_secret = f"{prefix}-{digest}-{'x' * len(secret)}"
    assert "not (or no longer) a current token" in _refused(tmp_path, addr, wrong_secret)
    wrong_digest = f"{prefix}-{'0' * len(digest)}-{secret}"
    assert "CA digest mismatch" in _refused(tmp_path, addr, wrong_digest)
    assert "invalid join token" in _refused(tmp_path, addr, "SWMTKN-garbage")

    c = control(m)
    c.RotateJoinToken(api.RotateJoinTokenRequest(role=pb.ROLE_WORKER))
    assert tokens(m).worker != good
    assert "not (or no longer) a current token" in _refused(tmp_path, addr, good)
    assert worker_nodes(m) == []


def test_roles_over_mtls(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, addr = cluster
    w = WorkerProcess(tmp_path / "w1", addr, tokens(m).worker, "--runtime", "simulated").start()
    workers.append(w)
    ident = NodeIdentity.load(w.state_dir)
    assert ident is not None

    # A worker certificate may not use the control API.
    with grpc.secure_channel(addr, ident.credentials(), options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ControlStub(ch).ListNodes(api.ListNodesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # No certificate at all: the mTLS handshake is refused.
    creds = grpc.ssl_channel_credentials(root_certificates=ident.ca_pem)
    with grpc.secure_channel(addr, creds, options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ControlStub(ch).ListNodes(api.ListNodesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # The join port takes callers without certificates, but only for the join RPC.
    with grpc.secure_channel(join_addr_for(addr), creds, options=channel_options()) as ch:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ControlStub(ch).ListNodes(api.ListNodesRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            ca_pb2_grpc.NodeCAStub(ch).RenewNodeCertificate(
                ca_pb2.RenewNodeCertificateRequest(), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Plain TCP without TLS: the handshake fails.
    with grpc.insecure_channel(addr) as ch:
        with pytest.raises(grpc.RpcError) as err:
            api_grpc.ControlStub(ch).ListNodes(api.ListNodesRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificates_renew_before_expiry(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    m, addr = cluster
    c = control(m)
    current = c.GetCluster(api.GetClusterRequest()).cluster
    spec = pb.ClusterSpec()
    spec.CopyFrom(current.spec)
    spec.ca.node_cert_expiry_ms = 12_000
    c.UpdateCluster(api.UpdateClusterRequest(version=current.meta.version, spec=spec))
    w = WorkerProcess(tmp_path / "w1", addr, tokens(m).worker, "--runtime", "simulated").start()
    workers.append(w)
    first = NodeIdentity.load(w.state_dir)
    assert first is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = NodeIdentity.load(w.state_dir)
        if now is not None and now.cert_pem != first.cert_pem:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the certificate was not renewed")
    assert now.node_id == first.node_id
    # Past the first certificate's expiry the node still talks to the manager.
    time.sleep(max(0.0, 13 - (time.monotonic() - (deadline - 20))))
    wait_nodes_ready(m, 1)
    c.CreateService(api.CreateServiceRequest(spec=service_spec("after", 1)))
    wait_service(m, "after", 1)


def test_clean_agent_restart_keeps_node_and_tasks(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    """A stopped agent (SIGTERM) says so: its node stays ready past the short grace of
    a lost session, and nothing is replaced while it restarts."""
    m, addr = cluster
    (w,) = start_workers(tmp_path, m, workers, "w1")
    c = control(m)
    c.CreateService(api.CreateServiceRequest(spec=service_spec("web", 3)))
    wait_service(m, "web", 3)
    before = {t.id for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks}
    assert w.stop() == 0
    time.sleep(3)  # three times the grace after a lost session
    assert all(n.status.state == pb.NODE_READY for n in worker_nodes(m))
    again = WorkerProcess(tmp_path / "w1", addr, "", "--runtime", "simulated", "--hostname", "w1")
    workers.append(again.start(control_socket=m.socket))
    wait_service(m, "web", 3)
    wait_idle(c)  # the new session's reports written and acted on
    after = {t.id for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks}
    assert after == before


def test_crashed_agent_on_a_live_host_costs_no_reschedule(
    tmp_path: Path, cluster: tuple[ManagerProcess, str], workers: list[WorkerProcess]
) -> None:
    """kill -9 of an agent whose host is up (its kernel refuses the manager's probe):
    its containers still run, so nothing moves while it comes back (here after 2 s)."""
    m, addr = cluster
    start_workers(tmp_path, m, workers, "w1", "w2")
    c = control(m)
    c.CreateService(api.CreateServiceRequest(spec=service_spec("web", 4)))
    wait_service(m, "web", 4)
    before = {t.id for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks}
    victim = workers[1]
    victim.kill()
    time.sleep(2)  # the agent stays away this long (the scenario, not a wait for a signal)
    assert victim.node_id in {n.id for n in worker_nodes(m) if n.status.state == pb.NODE_READY}
    again = WorkerProcess(
        victim.state_dir, addr, "", "--runtime", "simulated", "--hostname", "w2"
    ).start(control_socket=m.socket)
    workers.append(again)
    wait_idle(c)
    tasks = c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
    assert {t.id for t in tasks} == before, "tasks were replaced"
    assert all(t.status.state == pb.RUNNING for t in tasks)
    assert "agent gone but its host answers" in m.log_tail(20000)


def test_agent_that_stays_away_is_replaced_after_the_heartbeat_window(
    tmp_path: Path,
    cluster: tuple[ManagerProcess, str],
    workers: list[WorkerProcess],
    bounds: Bounds,
) -> None:
    """The host answers but its agent never comes back: after the heartbeat window
    (here 1 s x 2) the node is down and its tasks run elsewhere, one per slot."""
    m, _ = cluster
    assert (
        m.ctl("cluster", "update", "--heartbeat-period", "1s", "--heartbeat-misses", "2").code == 0
    )
    start_workers(tmp_path, m, workers, "w1", "w2")
    c = control(m)
    c.CreateService(api.CreateServiceRequest(spec=service_spec("web", 4)))
    wait_service(m, "web", 4)
    victim = workers[1]
    killed = time.monotonic()
    victim.kill()
    stream = c.WatchService(api.WatchServiceRequest(ref="web"), timeout=30)
    for _ in stream:  # every change of the service or its tasks
        tasks = c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
        on_live = [
            t
            for t in tasks
            if t.desired_state == pb.RUNNING
            and t.status.state == pb.RUNNING
            and t.node_id != victim.node_id
        ]
        if len(on_live) == 4:
            stream.cancel()
            break
    took = time.monotonic() - killed
    assert took >= 2.0, f"replaced after {took:.1f}s: the heartbeat window was not waited"
    bounds.check(took, 6.0, "agent gone on a live host -> 4/4 running elsewhere")
    node = c.GetNode(api.GetNodeRequest(ref=victim.node_id)).node
    assert node.status.state == pb.NODE_DOWN
    wait_idle(c)
    live_slots = sorted(
        t.slot
        for t in c.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
        if t.desired_state == pb.RUNNING
    )
    assert live_slots == [1, 2, 3, 4], "a slot has two tasks"
