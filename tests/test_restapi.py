"""The manager's HTTP/JSON socket against a real manager: every read path answers with
the views `swarmctl --format json` prints (and that the gRPC API's objects make),
the socket is root-only, bad requests get their status, and swarmctl's reads load
neither gRPC nor protobuf."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal import views
from shoal.lab.procs import ManagerProcess
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import EtcdConnection, Store
from shoal.restsock import rest_socket
from shoal.swarmctl.client import Client

from .helpers import make_node

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(manager: ManagerProcess, etcd: EmbeddedEtcd) -> AsyncIterator[ManagerProcess]:
    """A worker node n1, a network `front`, and service `web` (2 tasks on n1)."""
    store = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        await store.create(make_node("n1", {"zone": "a"}))
    finally:
        await store.close()
    assert manager.ctl("network", "create", "front").code == 0
    r = manager.ctl(
        "service", "create", "--name", "web", "--image", "busybox:latest", "--replicas", "2",
        "--network", "front", "--publish", "8080:80", "-d", "sleep", "1000",
    )  # fmt: skip
    assert r.code == 0, r.err
    yield manager


def http(sock: Path, request: str | bytes) -> tuple[int, dict[str, str], Any]:
    """One raw request on the manager's HTTP socket: (status, headers, JSON body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(rest_socket(str(sock)))
        s.sendall(request if isinstance(request, bytes) else request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def get(sock: Path, path: str) -> Any:
    status, _, body = http(sock, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200, body
    return body


def grpc_views(sock: Path) -> dict[str, Callable[[], Any]]:
    """What each path shows, made from the gRPC API's objects with the shared views."""
    c = Client(str(sock))

    def nets() -> dict[str, str]:
        return {n.id: n.spec.annotations.name for n in c.list_networks()}

    def hosts() -> dict[str, str]:
        return {n.id: n.description.hostname for n in c.list_nodes()}

    return {
        "/services": lambda: [views.service_view(s, nets()) for s in c.list_services()],
        "/services/web": lambda: views.service_view(c.get_service("web"), nets()),
        "/tasks?service=web": lambda: [
            views.task_view(t, hosts()) for t in c.list_tasks(service_ref="web")
        ],
        "/tasks?node=n1": lambda: [
            views.task_view(t, hosts()) for t in c.list_tasks(node_ref="n1")
        ],
        "/nodes": lambda: [views.node_view(n) for n in c.list_nodes()],
        "/nodes/n1": lambda: views.node_view(c.get_node("n1")),
        "/networks": lambda: [views.network_view(n) for n in c.list_networks()],
        "/networks/front": lambda: views.network_view(c.get_network("front")),
        "/cluster": lambda: views.cluster_view(c.get_cluster()),
    }


SWARMCTL = {
    "/services": ["service", "ls"],
    "/services/web": ["service", "inspect", "web"],
    "/tasks?service=web": ["service", "ps", "web"],
    "/tasks?node=n1": ["task", "ls", "--node", "n1"],
    "/nodes": ["node", "ls"],
    "/nodes/n1": ["node", "inspect", "n1"],
    "/networks": ["network", "ls"],
    "/networks/front": ["network", "inspect", "front"],
    "/cluster": ["cluster", "inspect"],
}


async def test_every_read_path_answers_what_format_json_prints(cluster: ManagerProcess) -> None:
    sock = cluster.socket
    made = grpc_views(sock)
    assert set(made) == set(SWARMCTL)
    for path, args in SWARMCTL.items():
        # Times and states move on (the orchestrator, heartbeats): a few tries to see
        # all three sides at one moment.
        for _ in range(5):
            rest = get(sock, path)
            r = cluster.ctl(*args, "--format", "json")
            assert r.code == 0, (path, r.err)
            if rest == json.loads(r.out) == made[path]():
                break
        else:
            pytest.fail(f"{path}: {rest} != {json.loads(r.out)} != {made[path]()}")
        assert rest, path  # not an empty list: the paths were exercised on real objects
    (task,) = get(sock, "/tasks?service=web")[:1]
    assert get(sock, f"/tasks/{task['id']}") == task
    assert get(sock, f"/tasks/{task['id'][:10]}") == task  # an ID prefix, as swarmctl takes


async def test_socket_is_root_only_and_beside_the_control_socket(manager: ManagerProcess) -> None:
    path = Path(rest_socket(str(manager.socket)))
    assert path == manager.state_dir / "control.http.sock"
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(manager.socket).st_mode) == 0o600
    assert manager.stop() == 0  # SIGTERM: a clean exit takes both sockets away
    assert not path.exists() and not manager.socket.exists()


async def test_bad_requests(manager: ManagerProcess) -> None:
    sock = manager.socket
    req = "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for path, status, words in (
        ("/", 404, "no such path"),
        ("/bogus", 404, "no such path: /bogus"),
        ("/services/web/tasks", 404, "no such path"),
        ("/cluster/x", 404, "no such path"),
        ("/services/nope", 404, "service 'nope' not found"),
        ("/services?x=1", 400, "unknown query parameter 'x'"),
        ("/tasks?service=a&service=b", 400, "given twice"),
        ("/nodes/", 400, "a node name or ID is required"),
    ):
        code, headers, body = http(sock, req.format(path))
        assert (code, headers["content-type"]) == (status, "application/json"), path
        assert words in body["error"], (path, body)
    code, headers, body = http(sock, "PUT /services/web HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 405 and headers["allow"] == "GET, DELETE" and headers["connection"] == "close"
    code, headers, body = http(sock, "POST /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 405 and headers["allow"] == "GET"
    code, _, body = http(sock, "nonsense\r\n\r\n")
    assert code == 400 and body == {"error": "malformed request", "code": "invalid_argument"}
    code, _, body = http(sock, req.format("//[x"))
    assert code == 400 and body["error"] == "malformed request target"
    # A digit outside ASCII is no length.
    head = b"POST /services HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n"
    code, _, body = http(sock, head)
    assert code == 400 and body["error"] == "malformed Content-Length"


async def test_keep_alive_serves_several_requests(manager: ManagerProcess) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(rest_socket(str(manager.socket)))
        s.sendall(b"GET /cluster HTTP/1.1\r\nHost: x\r\n\r\nGET /nodes HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk


_PROBE = """
import sys
from shoal.swarmctl.cli import main
sys.argv = ["swarmctl", *sys.argv[1:]]
try:
    main()
finally:
    loaded = sorted({m.split(".")[0] for m in sys.modules} & {"grpc", "google"})
    print("LOADED", loaded, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["service", "ls"],
        ["service", "ls", "-q"],
        ["service", "inspect", "web"],
        ["service", "ps", "web", "--format", "json"],
        ["task", "ls"],
        ["node", "ls"],
        ["network", "inspect", "front"],
        ["cluster", "inspect"],
        ["service", "inspect", "nope"],  # a failed read too
    ],
)
def test_reads_load_neither_grpc_nor_protobuf(cluster: ManagerProcess, args: list[str]) -> None:
    env = {**os.environ, "SWARM_SOCKET": str(cluster.socket)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == (1 if "nope" in args else 0), proc.stderr
    assert "LOADED []" in proc.stderr
    if "nope" in args:
        assert proc.stderr.startswith("Error: service 'nope' not found\n")
    else:
        assert proc.stdout


def test_reads_say_when_the_manager_is_unreachable(tmp_path: Path) -> None:
    env = {**os.environ, "SWARM_SOCKET": str(tmp_path / "none.sock")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "node", "ls"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"Error: cannot reach the manager at {tmp_path / 'none.sock'}: No such file or directory\n"
    )
