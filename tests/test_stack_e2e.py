"""A compose app on the netns cluster with real containers: secrets end to end.

h0 runs the manager (embedded etcd: its data dir is under the manager's state
dir) and a registry with the busybox test image; h1 and h2 run agents whose
containers run in the session's containerd. The app is deployed with
`swarmctl stack deploy` as a user would; what a task sees is checked by
exec'ing into its container (the secret's plain text never goes into argv:
the test compares a checksum computed inside).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.cluster import Cluster
from shoal.lab.containerd import Containerd
from shoal.lab.hosts import Hosts
from shoal.lab.procs import Result, swarmctl
from shoal.lab.registry import Registry
from shoal.proto import control_pb2 as api
from shoal.worker.runtime.containerd import ContainerdRuntime

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[1]
MOUNTS_ROOT = Path("/run/shoal")
# A checksum of the file computed inside the container, so the plain text stays out of argv.
CHECKSUM = (
    "awk '{h=0; for(i=1;i<=length($0);i++)"
    ' {h=(h*31+index("0123456789abcdef",substr($0,i,1)))%1000000007}; print h}\''
)

COMPOSE = """\
services:
  web:
    image: ${IMAGE}
    command:
      - sh
      - -c
      - >-
        trap 'exit 0' TERM; mkdir -p /tmp/www;
        echo ${GREETING} > /tmp/www/index.html;
        httpd -f -p 8080 -h /tmp/www & wait
    ports: ["18080:8080"]
    networks: [front]
    secrets:
      - source: db_pw
        uid: "1000"
        mode: 0400
    healthcheck:
      test: ["CMD-SHELL", "test -s /tmp/www/index.html"]
      interval: 1s
      retries: 3
    stop_grace_period: 2s
    deploy:
      replicas: 2
      placement: {max_replicas_per_node: 1}
      update_config: {parallelism: 1, delay: 0s}
  probe:
    image: ${IMAGE}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
    networks: [front]
    stop_grace_period: 2s
    depends_on:
      web:
        condition: service_healthy
    deploy:
      replicas: ${PROBE_REPLICAS:-1}
networks:
  front:
secrets:
  db_pw:
    file: ./db_pw.txt
"""


def checksum(text: str) -> int:
    h = 0
    for ch in text:
        h = (h * 31 + "0123456789abcdef".index(ch) + 1) % 1000000007
    return h


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, why: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}\n{why()}"
        time.sleep(0.2)  # test-side sampling through swarmctl / containerd


class App:
    def __init__(self, cluster: Cluster, containerd: Containerd, root: Path) -> None:
        self.c = cluster
        self.containerd = containerd
        self.root = root
        self.nodes: dict[str, str] = {}  # hostname -> node id
        self.image = ""

    def ctl(self, *args: str) -> Any:
        r = self.try_ctl(*args)
        assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
        return json.loads(r.out) if "--format" in args else r.out

    def try_ctl(self, *args: str) -> Result:
        return swarmctl(self.c.socket, *args, timeout=150)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.ctl("service", "ps", service, "--format", "json")
        return tasks

    def running(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["desired_state"] == "running" and t["state"] == "running"
        ]

    def diagnose(self) -> str:
        ps = self.try_ctl("stack", "ps", "app").out
        logs = "\n".join(f"--- {n}\n{self.c.log(n)[-1500:]}" for n in ("manager", *self.nodes))
        return f"{ps}\n{logs}"

    def exec(self, task: dict[str, Any], script: str) -> int:
        async def run() -> int:
            rt = ContainerdRuntime(str(self.containerd.socket), f"shoal-{task['node']}")
            try:
                return await rt.exec(task["id"], ["sh", "-c", script], 20)
            finally:
                await rt.close()

        return asyncio.run(run())

    def containers(self) -> int:
        async def count(node_id: str) -> int:
            rt = ContainerdRuntime(str(self.containerd.socket), f"shoal-{node_id}")
            try:
                return len(await rt.list())
            finally:
                await rt.close()

        return sum(asyncio.run(count(n)) for n in self.nodes.values())

    def state_dirs(self) -> list[Path]:
        return [self.c.manager_dir, *(self.root / h for h in self.nodes)]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, containerd: Containerd) -> Iterator[App]:
    root = tmp_path_factory.mktemp("stack")
    with Hosts(3) as hosts:
        h0 = hosts[0]
        registry = Registry(host=h0.addr, port=5000, wrap=h0.cmd()).start()
        try:
            c = Cluster(hosts, root)
            c.start_manager("--insecure-registry", registry.addr)
            a = App(c, containerd, root)
            push = h0.run(sys.executable, "-m", "shoal.lab.images", registry.addr, cwd=str(REPO))
            a.image = push.stdout.split()[0]
            for h in hosts.hosts[1:]:
                a.nodes[h.name] = c.start_worker(
                    h,
                    "--containerd-socket", str(containerd.socket),
                    "--insecure-registry", registry.addr,
                )  # fmt: skip
            try:
                yield a
            finally:
                for svc in a.ctl("service", "ls", "-q").split():
                    a.ctl("service", "rm", svc)
                wait_for(lambda: a.containers() == 0, 60, "containers removed")
        finally:
            registry.stop()


def write_app(d: Path, image: str, plain: str, probe_replicas: int = 1) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / ".env").write_text(
        f"IMAGE={image}\nGREETING=hello-from-env\nPROBE_REPLICAS={probe_replicas}\n"
    )
    (d / "db_pw.txt").write_text(plain)
    path = d / "docker-compose.yml"
    path.write_text(COMPOSE)
    return path


def grep_disk(dirs: list[Path], needle: bytes) -> list[str]:
    """Files under dirs (not crossing into other mounts) that contain needle."""
    hits = []
    for d in dirs:
        dev = d.stat().st_dev
        for base, subdirs, files in os.walk(d):
            subdirs[:] = [s for s in subdirs if os.lstat(os.path.join(base, s)).st_dev == dev]
            for name in files:
                path = os.path.join(base, name)
                try:
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    with open(path, "rb") as f:
                        if needle in f.read():
                            hits.append(path)
                except OSError:
                    continue
    return hits


def task_files_as(app: App, hostname: str, task_id: str) -> str:
    """A TaskFiles call with that node's own certificate, from its host: the status code."""
    script = (
        "import asyncio, grpc, sys\n"
        "from pathlib import Path\n"
        "from shoal.pki.identity import NodeIdentity\n"
        "from shoal.proto import dispatcher_pb2 as d, dispatcher_pb2_grpc as g\n"
        "async def main():\n"
        f"    ident = NodeIdentity.load(Path({str(app.root / hostname)!r}))\n"
        f"    ch = ident.channel({app.c.manager_addr!r})\n"
        "    try:\n"
        "        r = await g.DispatcherStub(ch).TaskFiles(\n"
        f"            d.TaskFilesRequest(task_id={task_id!r}), timeout=10)\n"
        "        print('OK', len(r.files))\n"
        "    except grpc.aio.AioRpcError as e:\n"
        "        print(e.code().name)\n"
        "    finally:\n"
        "        await ch.close()\n"
        "asyncio.run(main())\n"
    )
    host = next(h for h in app.c.hosts.hosts if h.name == hostname)
    return host.run(sys.executable, "-c", script, cwd=str(REPO)).stdout.strip()


def first_task_ms(app: App, service: str) -> int:
    tasks = app.c.control().ListTasks(api.ListTasksRequest(service_ref=service)).tasks
    return min(int(t.meta.created_at_ms) for t in tasks)


def check_secret_in(app: App, task: dict[str, Any], plain: str) -> None:
    target = "/run/secrets/db_pw"
    assert app.exec(task, f'test "$({CHECKSUM} {target})" = "{checksum(plain)}"') == 0
    # Read-only, on a tmpfs, with the uid and mode asked for.
    assert app.exec(task, f"grep -q ' {target} tmpfs ro,' /proc/mounts") == 0
    assert app.exec(task, f"echo x >> {target}") != 0
    mode_and_owner = 'awk \'{exit !($1=="-r--------" && $3=="1000")}\''
    assert app.exec(task, f"ls -ln {target} | {mode_and_owner}") == 0


def test_compose_app_with_a_secret_end_to_end(app: App, tmp_path: Path) -> None:
    plain = secrets.token_hex(20)
    compose = write_app(tmp_path / "app", app.image, plain)
    out = app.ctl("stack", "deploy", "-c", str(compose), "app")
    assert "create service app_web" in out and "create secret app_db_pw" in out
    wait_for(
        lambda: len(app.running("app_web")) == 2 and len(app.running("app_probe")) == 1,
        120,
        "app up",
        app.diagnose,
    )

    services = app.ctl("stack", "services", "app", "--format", "json")
    assert sorted(s["name"] for s in services) == ["app_probe", "app_web"]
    assert all(s["stack"] == "app" for s in services)
    assert app.ctl("stack", "ls", "--format", "json") == [{"name": "app", "services": 2}]
    assert (
        len(
            [
                t
                for t in app.ctl("stack", "ps", "app", "--format", "json")
                if t["state"] == "running"
            ]
        )
        == 3
    )
    web_tasks = app.running("app_web")
    assert len(app.running("app_probe")) == 1
    # depends_on service_healthy: the probe's first task came after a healthy web task.
    assert first_task_ms(app, "app_probe") - first_task_ms(app, "app_web") >= 900, (
        "the probe did not wait for a healthy web task (checked every 1s)"
    )

    for t in web_tasks:
        check_secret_in(app, t, plain)
        assert app.exec(t, "grep -q hello-from-env /tmp/www/index.html") == 0

    # A node without the task is refused its secret; the node running it gets it.
    owner = next(h for h, n in app.nodes.items() if n == web_tasks[0]["node"])
    other = next(h for h in app.nodes if h != owner)
    other_task = next((t for t in web_tasks if t["node"] == app.nodes[other]), None)
    assert task_files_as(app, owner, web_tasks[0]["id"]) == "OK 1"
    assert task_files_as(app, other, web_tasks[0]["id"]) == "PERMISSION_DENIED"
    if other_task is not None:
        assert task_files_as(app, owner, other_task["id"]) == "PERMISSION_DENIED"

    # The plain text is nowhere on disk: manager + etcd data, agents' state dirs.
    assert grep_disk(app.state_dirs(), plain.encode()) == []
    assert (app.c.manager_dir / "kek.json").stat().st_mode & 0o777 == 0o600

    redeploy_and_update(app, tmp_path, compose, plain)


def redeploy_and_update(app: App, tmp_path: Path, compose: Path, plain: str) -> None:
    # Redeploy with more probes: web's tasks are left alone.
    before = {t["id"] for t in app.running("app_web")}
    write_app(tmp_path / "app", app.image, plain, probe_replicas=2)
    out = app.ctl("stack", "deploy", "-c", str(compose), "app")
    assert "update service app_probe" in out and "app_web" not in out
    wait_for(lambda: len(app.running("app_probe")) == 2, 60, "probe scaled")
    assert {t["id"] for t in app.running("app_web")} == before

    # secret update: a new version, web rolls to it.
    new_plain = secrets.token_hex(20)
    (tmp_path / "new").write_text(new_plain)
    app.ctl("secret", "update", "app_db_pw", str(tmp_path / "new"))
    assert app.ctl("secret", "inspect", "app_db_pw", "--format", "json")["secret_version"] == 2

    def rolled() -> bool:
        running = app.running("app_web")
        return len(running) == 2 and not ({t["id"] for t in running} & before)

    wait_for(rolled, 120, "web rolled to the new secret")
    for t in app.running("app_web"):
        check_secret_in(app, t, new_plain)
    assert grep_disk(app.state_dirs(), new_plain.encode()) == []

    # In use: refused, naming the service.
    refused = app.try_ctl("secret", "rm", "app_db_pw")
    assert refused.code == 1 and "app_web" in refused.err

    # stack rm: no service, network, secret or container left; the tmpfs mounts are gone.
    app.ctl("stack", "rm", "app")
    assert app.ctl("service", "ls", "-q").strip() == ""
    assert app.ctl("network", "ls", "--format", "json") == []
    assert app.ctl("secret", "ls", "--format", "json") == []
    wait_for(lambda: app.containers() == 0, 60, "containers removed")
    wait_for(
        lambda: not any((MOUNTS_ROOT / n).exists() for n in app.nodes.values()),
        30,
        "mounts gone",
    )
    assert f" {MOUNTS_ROOT}/" not in Path("/proc/mounts").read_text()


def test_invalid_compose_creates_nothing(app: App, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(f"services:\n  web:\n    image: {app.image}\n    deploy:\n      replicas: two\n")
    r = app.try_ctl("stack", "deploy", "-c", str(bad), "bad")
    assert r.code == 1
    assert f"{bad}:5: services.web.deploy.replicas: expected an integer" in r.err
    bad.write_text(f"services:\n  web:\n    image: {app.image}\nextras: {{}}\n")
    r = app.try_ctl("stack", "deploy", "-c", str(bad), "bad")
    assert r.code == 1 and f"{bad}:4: extras: unknown key 'extras'" in r.err
    assert app.ctl("service", "ls", "-q").strip() == ""
    assert app.ctl("network", "ls", "--format", "json") == []
    assert app.ctl("stack", "ls", "--format", "json") == []
