"""Real containers: one manager, two worker agents sharing one containerd, a local registry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoal.lab.containerd import Containerd
from shoal.lab.procs import ManagerProcess, WorkerProcess, free_manager_addr, wait_for
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

from .helpers import wait_idle

pytestmark = pytest.mark.integration


class Cluster:
    def __init__(
        self, manager: ManagerProcess, workers: list[WorkerProcess], containerd: Containerd
    ) -> None:
        self.m = manager
        self.workers = workers
        self.containerd = containerd

    def ctl(self, *args: str, timeout: float = 120) -> list | dict | str:  # type: ignore[type-arg]
        r = self.m.ctl(*args, timeout=timeout)
        assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
        return json.loads(r.out) if "--format" in args else r.out

    def tasks(self, service: str) -> list[dict]:  # type: ignore[type-arg]
        return self.ctl("service", "ps", service, "--format", "json")  # type: ignore[return-value]

    def live(self, service: str) -> list[dict]:  # type: ignore[type-arg]
        return [t for t in self.tasks(service) if t["desired_state"] == "running"]

    def containers(self) -> dict[str, list[str]]:
        """Container IDs per node namespace, straight from containerd."""

        return {w.node_id: list(self.containerd.containers(w.node_id)) for w in self.workers}

    def wait(self, predicate, limit_s: float = 60) -> None:  # type: ignore[no-untyped-def]
        # containerd has no watch in our API: a test-side poll.
        wait_for(predicate, limit_s, "condition", every=0.2)


@pytest.fixture
def cluster(
    tmp_path: Path,
    containerd: Containerd,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> Iterator[Cluster]:
    addr = free_manager_addr()
    m = ManagerProcess(tmp_path / "m1", "--listen-addr", addr).start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    for i in (1, 2):
        workers.append(
            WorkerProcess(
                tmp_path / f"w{i}",
                addr,
                token,
                "--hostname",
                f"w{i}",
                "--containerd-socket",
                str(containerd.socket),
            ).start(control_socket=m.socket)
        )
    c = Cluster(m, workers, containerd)
    c.wait(
        lambda: (
            sum(
                1
                for n in c.ctl("node", "ls", "--format", "json")  # type: ignore[union-attr]
                if n["status"] == "ready" and n["role"] == "worker"
            )
            == 2
        )
    )
    yield c
    # Whatever a test left: remove its services, then nothing may remain in containerd.
    for svc in c.ctl("service", "ls", "-q").split():  # type: ignore[union-attr]
        c.ctl("service", "rm", svc)
    c.wait(lambda: not any(c.containers().values()), 60)


def test_run_scale_remove(cluster: Cluster, busybox_image: str) -> None:
    c = cluster
    c.ctl(
        "service",
        "create",
        "--name",
        "web",
        "--image",
        busybox_image,
        "--replicas",
        "4",
        "--stop-grace-period",
        "1s",
        "sleep",
        "1000",
    )
    tasks = c.live("web")
    assert len(tasks) == 4 and all(t["state"] == "running" for t in tasks)
    per_node: dict[str, int] = {}
    for t in tasks:
        assert t["node_hostname"] in ("w1", "w2") and t["container_id"] == t["id"]
        per_node[t["node_hostname"]] = per_node.get(t["node_hostname"], 0) + 1
    assert per_node == {"w1": 2, "w2": 2}
    running = c.containers()
    assert sorted(i for ids in running.values() for i in ids) == sorted(t["id"] for t in tasks)

    c.ctl("service", "scale", "web=1")
    assert len(c.live("web")) == 1
    # sleep as PID 1 ignores SIGTERM: the agents SIGKILL after the grace period.
    c.wait(lambda: sum(1 for t in c.tasks("web") if t["state"] == "shutdown") == 3)
    stopped = [t for t in c.tasks("web") if t["desired_state"] == "shutdown"]
    assert len(stopped) == 3 and all(t["exit_code"] == 137 for t in stopped)
    assert len([i for ids in c.containers().values() for i in ids]) == 4  # kept as history

    c.ctl("service", "rm", "web")
    c.wait(lambda: not any(c.containers().values()))


def test_missing_image_is_rejected_with_the_registry_error(
    cluster: Cluster, registry: object, busybox_image: str
) -> None:
    c = cluster
    missing = busybox_image.rsplit("/", 1)[0] + "/nope:latest"
    r = c.m.ctl("service", "create", "--name", "ghost", "--image", missing, "--timeout", "5s")
    assert r.code == 1 and "manifest unknown" in r.err
    rejected = [t for t in c.tasks("ghost") if t["state"] == "rejected"]
    assert rejected, c.tasks("ghost")
    assert "manifest unknown" in rejected[0]["error"]
    assert "nope" in rejected[0]["error"]


def test_nonzero_exit_is_failed_with_its_code(cluster: Cluster, busybox_image: str) -> None:
    c = cluster
    c.ctl(
        "service",
        "create",
        "--name",
        "crash",
        "--image",
        busybox_image,
        "-d",
        "--restart-condition",
        "none",
        "sh",
        "-c",
        "exit 3",
    )

    def failed() -> bool:
        return any(t["state"] == "failed" for t in c.tasks("crash"))

    c.wait(failed)
    (t,) = [t for t in c.tasks("crash") if t["state"] == "failed"]
    assert t["exit_code"] == 3 and t["error"] == "task: non-zero exit (3)"


def test_env_user_memory_and_bind_mount_inside(
    cluster: Cluster, busybox_image: str, tmp_path: Path
) -> None:
    c = cluster
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_text("from the host")
    c.ctl(
        "service",
        "create",
        "--name",
        "probe",
        "--image",
        busybox_image,
        "--env",
        "FOO=bar",
        "--user",
        "1000:1000",
        "--memory-limit",
        "64M",
        "--stop-grace-period",
        "1s",
        "--mount",
        f"type=bind,source={data},target=/data,readonly",
        "sh",
        "-c",
        "echo FOO=$FOO; id; cat /data/x; echo; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null "
        "|| cat /sys/fs/cgroup/memory.max; sleep 1000",
    )
    (t,) = c.live("probe")
    worker = next(w for w in c.workers if w.node_id == t["node"])
    log = worker.state_dir / "logs" / f"{t['id']}.log"
    c.wait(lambda: log.exists() and "67108864" in log.read_text(), 20)
    text = log.read_text()
    assert "FOO=bar" in text and "uid=1000(app) gid=1000(app)" in text
    assert "from the host" in text and "67108864" in text
    logs = c.m.ctl("service", "logs", "probe")
    assert logs.code == 0 and "FOO=bar" in logs.out and "probe.1." in logs.out


def test_agent_kill_9_keeps_containers(cluster: Cluster, busybox_image: str) -> None:
    c = cluster
    c.ctl(
        "service",
        "create",
        "--name",
        "keep",
        "--image",
        busybox_image,
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "sleep",
        "1000",
    )
    before = {t["id"]: t for t in c.live("keep")}
    w1 = c.workers[0]
    held = set(c.containers()[w1.node_id])
    assert held, "w1 runs none of the tasks"
    killed_ms = int(time.time() * 1000)
    w1.kill()
    again = WorkerProcess(
        w1.state_dir,
        w1.join_addr,
        "",
        "--hostname",
        "w1",
        "--containerd-socket",
        str(c.containerd.socket),
    ).start(control_socket=c.m.socket)  # returns once the new agent registered
    c.workers[0] = again
    control = api_grpc.ControlStub(grpc.insecure_channel(f"unix://{c.m.socket}"))

    def reported_again() -> bool:
        """The new agent found each of its containers and said so (a fresh report)."""
        tasks = control.ListTasks(api.ListTasksRequest(node_ref=w1.node_id)).tasks
        mine = [t for t in tasks if t.id in held]
        return len(mine) == len(held) and all(t.status.timestamp_ms > killed_ms for t in mine)

    c.wait(reported_again, 30)
    wait_idle(control)  # and the leader acted on all of it: a wrong restart would show
    after = {t["id"]: t for t in c.live("keep")}
    assert after.keys() == before.keys(), "tasks were replaced"
    assert all(t["state"] == "running" for t in after.values())
    assert set(c.containers()[w1.node_id]) == held
    assert len(c.tasks("keep")) == 2, "no task restarted"


def test_health_check_runs_in_the_container(cluster: Cluster, busybox_image: str) -> None:
    c = cluster
    # Healthy only once /tmp/ok exists: the first task never creates it.
    c.ctl(
        "service",
        "create",
        "--name",
        "checked",
        "--image",
        busybox_image,
        "-d",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--stop-grace-period",
        "1s",
        "sleep",
        "1000",
    )
    c.wait(lambda: any("unhealthy container" in t["error"] for t in c.tasks("checked")), 30)
    c.ctl("service", "rm", "checked")
    c.ctl(
        "service",
        "create",
        "--name",
        "fine",
        "--image",
        busybox_image,
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "300ms",
        "--stop-grace-period",
        "1s",
        "sh",
        "-c",
        "touch /tmp/ok; sleep 1000",
    )  # waits until healthy
    (t,) = c.live("fine")
    assert t["health"] == "healthy"


def test_stop_first_update_starts_a_replacement_once_its_old_task_stopped(
    cluster: Cluster, busybox_image: str
) -> None:
    """The default update order with real containers: the old one (`sleep` ignores
    SIGTERM, so it stops when its 2 s grace runs out) has exited before its replacement
    starts; the replacement was placed meanwhile."""
    c = cluster
    c.ctl(
        "service", "create", "--name", "web", "--image", busybox_image, "--replicas", "2",
        "--stop-grace-period", "2s", "sleep", "1000",
    )  # fmt: skip
    out = c.ctl("service", "update", "web", "--force")
    stub = api_grpc.ControlStub(grpc.insecure_channel(f"unix://{c.m.socket}"))
    tasks = stub.ListTasks(api.ListTasksRequest(service_ref="web")).tasks
    for slot in (1, 2):
        assert len([t for t in tasks if t.slot == slot]) == 2, (out, tasks)
        old, new = sorted(
            (t for t in tasks if t.slot == slot), key=lambda t: t.meta.created_at_ms
        )
        assert new.status.state == pb.RUNNING, new.status
        assert old.status.state == pb.SHUTDOWN and old.status.container.exit_code == 137, old.status
        # The agents' own report times: the old container's end, the new one's start.
        assert new.status.timestamp_ms >= old.status.timestamp_ms, (slot, old, new)
