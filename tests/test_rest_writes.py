"""Service writes on the manager's HTTP/JSON socket, spoken raw as `curl --unix-socket`
would, against a real manager and etcd: statuses, JSON error bodies that say what the
gRPC API says for the same request, refusals that write nothing, the convergence
stream; and swarmctl's service writes, which use that socket and load neither gRPC
nor protobuf."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from shoal.lab.procs import ManagerProcess
from shoal.manager.store import Store
from shoal.proto import objects_pb2 as pb
from shoal.restsock import rest_socket
from shoal.swarmctl.client import Client
from shoal.swarmctl.errors import CLIError

# test_restapi's probe: runs swarmctl, and lists what got loaded.
from .test_restapi import _PROBE

pytestmark = pytest.mark.integration

# A registry on a closed loopback port: the manager's pinning fails at once, with a
# warning (and nothing leaves the host).
IMAGE = "127.0.0.1:9/busybox:latest"
SPEC = {
    "annotations": {"name": "web"},
    "task": {"container": {"image": IMAGE, "command": ["sleep", "1000"]}},
    "replicated": {"replicas": 2},
}


def exchange(
    sock: Path, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> bytes:
    """One request on the HTTP socket, `Connection: close`; the whole answer."""
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body is not None or raw is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(rest_socket(str(sock)))
        s.sendall(head.encode() + b"\r\n" + data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def call(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    head, _, data = exchange(sock, method, path, body).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(data)
    return int(lines[0].split()[1]), json.loads(data)


def grpc_error(sock: Path, spec: dict[str, Any]) -> CLIError:
    """What the gRPC API answers CreateService with this spec."""
    c = Client(str(sock))
    try:
        c.create_service(json_format.ParseDict(spec, pb.ServiceSpec()))
    except CLIError as err:
        return err
    finally:
        c.close()
    raise AssertionError("the gRPC API accepted it")


async def refused_without_writing(
    store: Store, sock: Path, method: str, path: str, body: Any
) -> tuple[int, Any]:
    """The answer to a request that must be refused, having checked it wrote nothing:
    the etcd revision is the same before and after (tried again if something else in
    the cluster wrote meanwhile: the refusal is the same every time)."""
    for _ in range(5):
        before = await store.revision()
        status, answer = call(sock, method, path, body)
        if await store.revision() == before:
            return status, answer
    raise AssertionError(f"{method} {path}: the etcd revision moved every time")


async def test_create_scale_update_remove(manager: ManagerProcess, store: Store) -> None:
    sock = manager.socket
    status, created = call(sock, "POST", "/services", {"spec": SPEC})
    assert status == 201, created
    assert (created["name"], created["replicas"]) == ("web", 2)
    (warning,) = created["warnings"]
    assert warning.startswith(f"image {IMAGE} could not be resolved to a digest")
    # What the reads and swarmctl see of it.
    assert call(sock, "GET", f"/services/{created['id']}")[1]["version"] == created["version"]
    status, stored = call(sock, "GET", "/services/web/spec")
    assert status == 200 and stored["version"] == created["version"]
    assert stored["spec"]["task"]["container"]["image"] == IMAGE

    status, scaled = call(sock, "POST", "/services/web/scale", {"replicas": 5})
    assert status == 200 and scaled["replicas"] == 5
    assert scaled["spec_version"] == created["spec_version"]  # replicas alone: no new tasks

    spec = stored["spec"]
    spec["task"]["container"]["env"] = ["A=1"]
    stale = {"spec": spec, "version": stored["version"]}  # read before the scale
    status, err = await refused_without_writing(store, sock, "POST", "/services/web/update", stale)
    assert (status, err["code"]) == (409, "aborted"), err
    assert "changed since it was read" in err["error"]

    fresh = call(sock, "GET", "/services/web/spec")[1]
    fresh["spec"]["task"]["container"]["env"] = ["A=1"]
    body = {"spec": fresh["spec"], "version": fresh["version"], "force": True}
    status, updated = call(sock, "POST", "/services/web/update", body)
    assert status == 200 and updated["env"] == ["A=1"], updated
    assert updated["spec_version"] == created["spec_version"] + 1
    status, rolled = call(sock, "POST", "/services/web/update", {"rollback": True})
    assert status == 200 and rolled["env"] == [] and rolled["replicas"] == 5

    status, removed = call(sock, "DELETE", "/services/web")
    assert (status, removed) == (200, {"id": created["id"]})
    status, err = call(sock, "DELETE", "/services/web")
    assert (status, err) == (404, {"error": "service 'web' not found", "code": "not_found"})


async def test_refusals_are_the_grpc_apis_and_write_nothing(
    manager: ManagerProcess, store: Store
) -> None:
    sock = manager.socket
    assert call(sock, "POST", "/services", {"spec": SPEC})[0] == 201
    bad_image = {**SPEC, "annotations": {"name": "w2"}, "task": {"container": {"image": ""}}}
    no_net: dict[str, Any] = {**SPEC, "annotations": {"name": "w3"}}
    no_net["task"] = {"container": {"image": IMAGE}, "networks": [{"target": "nope"}]}
    too_many = {**SPEC, "annotations": {"name": "w4"}, "replicated": {"replicas": 10**9}}
    for spec, status, code in (
        (SPEC, 409, "already_exists"),  # the name is taken
        (bad_image, 400, "invalid_argument"),
        (no_net, 404, "not_found"),
        (too_many, 400, "invalid_argument"),
    ):
        got, err = await refused_without_writing(store, sock, "POST", "/services", {"spec": spec})
        assert (got, err["code"]) == (status, code), err
        # The same sentence and code the gRPC API gives for the same spec.
        expected = grpc_error(sock, spec)
        assert (err["error"], err["code"]) == (str(expected), expected.code)
    bodies: tuple[tuple[Any, str], ...] = (
        ({"spec": {**SPEC, "colour": "red"}}, "invalid spec: "),
        ({"spec": {**SPEC, "endpoint_mode": "ENDPOINT_NOPE"}}, "invalid spec: "),
        ({"spek": SPEC}, "unknown field 'spek'"),
        ({}, "a spec is required"),
        ([], "the request body must be a JSON object"),
    )
    for body, words in bodies:
        got, err = await refused_without_writing(store, sock, "POST", "/services", body)
        assert got == 400 and err["error"].startswith(words), (body, err)
    writes: tuple[tuple[str, Any, int, str], ...] = (
        ("/services/web/scale", {"replicas": -1}, 400, "replicas must be 0 or more"),
        ("/services/web/scale", {"replicas": "3"}, 400, "wrong type"),
        ("/services/nope/scale", {"replicas": 3}, 404, "service 'nope' not found"),
        ("/services/web/update", {"rollback": True}, 409, "no previous spec"),
        ("/services/web/update", {"spec": SPEC, "rollback": True}, 400, "either a spec or"),
        ("/services/web/update", {"spec": {**SPEC, "global": {}}}, 400, "invalid spec"),
        ("/services/web/scale", {"replicas": 3, "version": 2**64}, 400, "version must be"),
        ("/services/web/update", {"spec": SPEC, "version": -1}, 400, "version must be"),
    )
    for path, body, status, words in writes:
        got, err = await refused_without_writing(store, sock, "POST", path, body)
        assert got == status and words in err["error"], (path, body, err)
    # Not JSON; a chunked body; a method the path does not take.
    answer = exchange(sock, "POST", "/services", raw=b"{nope")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"not JSON" in answer
    req = b"POST /services HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(rest_socket(str(sock)))
        s.sendall(req)
        assert s.recv(65536).startswith(b"HTTP/1.1 411 ")
    answer = exchange(sock, "PUT", "/services/web")
    assert answer.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, DELETE\r\n" in answer


class SilentRegistry:
    """A loopback port that takes connections and never answers: the manager's pinning
    waits for it as long as it waits for any registry."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.addr = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.reached = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return  # closed
            self.held.append(conn)
            self.reached.set()

    def close(self) -> None:
        self.srv.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_registry() -> Iterator[SilentRegistry]:
    reg = SilentRegistry()
    try:
        yield reg
    finally:
        reg.close()


def test_a_write_whose_client_hung_up_is_cancelled(
    manager: ManagerProcess, silent_registry: SilentRegistry
) -> None:
    def spec(name: str) -> dict[str, Any]:
        image = f"{silent_registry.addr}/busybox:latest"
        return dict(SPEC, annotations={"name": name}, task={"container": {"image": image}})

    body = json.dumps({"spec": spec("abandoned")}).encode()
    head = f"POST /services HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(rest_socket(str(manager.socket)))
        s.sendall(head.encode() + body)
        # The manager is pinning the image now; then the client gives up.
        assert silent_registry.reached.wait(10)
    # The positive control, started later with the same registry, waits out the same
    # pinning budget: once it is answered the abandoned one would have been as well.
    status, kept = call(manager.socket, "POST", "/services", {"spec": spec("kept")})
    assert status == 201, kept
    assert "no answer within" in kept["warnings"][0]
    assert call(manager.socket, "GET", "/services/kept")[0] == 200
    status, answer = call(manager.socket, "GET", "/services/abandoned")
    assert status == 404, answer


def chunks(answer: bytes) -> list[Any]:
    """The JSON lines of a chunked answer (which must end with its last chunk)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"application/x-ndjson" in head
    out: list[Any] = []
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out.append(json.loads(body[:size]))
        body = body[size + 2 :]


async def test_watch_streams_progress_until_its_timeout(manager: ManagerProcess) -> None:
    sock = manager.socket
    assert call(sock, "POST", "/services", {"spec": SPEC})[0] == 201
    started = time.monotonic()
    lines = chunks(exchange(sock, "GET", "/services/web/watch?timeout=1.5"))
    assert 1.4 <= time.monotonic() - started < 10
    first = lines[0]
    assert (first["name"], first["want"], first["removed"]) == ("web", 2, False)
    assert (lines[-1]["desired"], lines[-1]["running"]) == (2, 0)  # no node to run on
    status, err = call(sock, "GET", "/services/nope/watch")
    assert (status, err["code"]) == (404, "not_found")
    assert call(sock, "GET", "/services/web/watch?timeout=x")[0] == 400
    # A removal ends the stream at once.
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(rest_socket(str(sock)))
        s.sendall(b"GET /services/web/watch HTTP/1.1\r\nHost: x\r\n\r\n")
        out = s.recv(65536)
        assert b"\r\n\r\n" in out
        assert call(sock, "DELETE", "/services/web")[0] == 200
        while chunk := s.recv(65536):
            out += chunk
    assert chunks(out)[-1] == {"removed": True}


def swarmctl(m: ManagerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWARM_SOCKET": str(m.socket)}
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_service_writes_load_neither_grpc_nor_protobuf(manager: ManagerProcess) -> None:
    warned = f"warning: image {IMAGE} could not be resolved"
    for args, code, out, err in (
        (["service", "create", "--name", "w", "--image", IMAGE, "-d", "--env", "A=1"], 0, "",
         warned),
        (["service", "create", "--name", "w", "--image", IMAGE, "-d"], 1, "",
         "Error: service 'w' already exists\n"),
        (["service", "scale", "w=3", "-d"], 0, "w\n", ""),
        (["service", "scale", "nope=3", "-d"], 1, "", "Error: service 'nope' not found\n"),
        (["service", "update", "--env-rm", "A", "--replicas", "0", "w"], 0, "w\n", ""),
        (["service", "update", "--rollback", "-d", "w"], 0, "w\n", ""),
        (["service", "update", "--network", "nope", "-d", "w"], 1, "",
         "Error: network 'nope' not found\n"),
        # Waits over the stream: nothing can run (no nodes), so time runs out.
        (["service", "create", "--name", "v", "--image", IMAGE, "--timeout", "1s"], 1, "",
         "Error: service v did not converge within 1s: 0/1 running"),
        (["service", "rm", "w", "nope", "v"], 1, "", "Error: service 'nope' not found\n"),
    ):  # fmt: skip
        r = swarmctl(manager, *args)
        assert r.returncode == code, (args, r.stderr)
        assert r.stdout.endswith(out) and bool(r.stdout) == (code == 0 or args[1] == "rm"), args
        # The one line swarmctl printed over gRPC (after the pinning warning, if any).
        lines = [line for line in r.stderr.splitlines(True) if not line.startswith("warning:")]
        assert "".join(lines).startswith(err.removeprefix(warned)), (args, r.stderr)
        assert warned in r.stderr or err != warned
        assert r.stderr.endswith("LOADED []\n"), (args, r.stderr)
    assert manager.ctl("service", "ls", "-q").out == ""
