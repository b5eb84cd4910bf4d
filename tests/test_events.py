"""`swarmctl events`: a real manager's watch as a stream of events."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.manager.etcd_tls import EtcdCredentials

pytestmark = pytest.mark.integration

KEYS = {"time", "revision", "type", "action", "id", "name"}


class EventStream:
    """`swarmctl events ...` running; its JSON lines read by a thread."""

    def __init__(self, socket: Path, *args: str) -> None:
        env = {**os.environ, "SWARM_SOCKET": str(socket)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.swarmctl", "events", "--format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> list[Any]:
        """Events up to and including the first for which `done` holds."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"events ended: {self.stop()}"
            ev = json.loads(line)
            assert set(ev) == KEYS, ev
            got.append(ev)
            if done(ev):
                return got

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


@pytest.fixture
def streams() -> Iterator[list[EventStream]]:
    started: list[EventStream] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.stop()


def is_removal_of(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda ev: ev["type"] == "service" and ev["action"] == "remove" and ev["name"] == name


def test_create_scale_remove_as_events(
    tmp_path: Path,
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
    streams: list[EventStream],
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    token = m.ctl("cluster", "join-token", "worker", "-q").out.strip()
    w = WorkerProcess(tmp_path / "w1", m.addr, token, "--runtime", "simulated", "--hostname", "w1")
    workers.append(w.start())
    everything = EventStream(m.socket)
    no_tasks = EventStream(m.socket, "--filter", "type=service", "--filter", "type=node")
    streams += [everything, no_tasks]
    # A node update seen on the streams shows they are up before the service is created
    # (the swarmctl processes take a moment to start: updates until both saw one).
    pending = [everything, no_tasks]
    for i in range(60):
        assert m.ctl("node", "update", "w1", "--label-add", f"probe={i}").code == 0
        for stream in list(pending):
            with contextlib.suppress(queue.Empty):
                node = stream.until(lambda ev: ev["type"] == "node", timeout=0.5)[-1]
                assert node["action"] == "update" and node["name"] == "w1"
                pending.remove(stream)
        if not pending:
            break
    assert not pending

    assert m.ctl("service", "create", "--name", "web", "--image", "busybox", "--replicas",
                 "2", "sleep", "100").code == 0  # fmt: skip
    service_id = m.ctl("service", "inspect", "web").json()["id"]
    assert m.ctl("service", "scale", "web=3").code == 0
    assert m.ctl("service", "rm", "web").code == 0

    evs = everything.until(is_removal_of("web"))
    services = [e for e in evs if e["type"] == "service"]
    assert services[0]["action"] == "create"
    assert services[-1]["action"] == "remove"
    assert {e["action"] for e in services[1:-1]} <= {"update"} and len(services) >= 3
    assert all(e["id"] == service_id and e["name"] == "web" for e in services)
    tasks = [e for e in evs if e["type"] == "task"]
    created = {e["id"] for e in tasks if e["action"] == "create"}
    assert len(created) == 3
    assert {e["name"] for e in tasks if e["action"] == "create"} == {"web.1", "web.2", "web.3"}
    assert any(e["action"] == "update" for e in tasks)  # assigned, running...
    revisions = [e["revision"] for e in evs]
    assert revisions == sorted(revisions)
    assert all(e["time"].endswith("Z") for e in evs)

    filtered = no_tasks.until(is_removal_of("web"))
    assert [e for e in filtered if e["type"] == "service"] == services
    assert {e["type"] for e in filtered} <= {"service", "node"}

    # Replays: from the create's revision, and from a minute ago, give the same events.
    first = services[0]["revision"]
    replay = EventStream(m.socket, "--since", str(first))
    streams.append(replay)
    assert [e for e in replay.until(is_removal_of("web")) if e["revision"] >= first] == [
        e for e in evs if e["revision"] >= first
    ]
    ago = EventStream(m.socket, "--since", "1m", "--filter", "type=service")
    streams.append(ago)
    assert ago.until(is_removal_of("web")) == services


def test_since_before_the_manager_started_and_before_compaction(
    tmp_path: Path, managers: list[ManagerProcess], streams: list[EventStream]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    assert m.ctl("service", "create", "-d", "--name", "old", "--image", "busybox", "true").code == 0
    assert m.ctl("service", "rm", "old").code == 0
    # A restarted manager has an empty journal: older revisions come from etcd's history.
    m.stop()
    m.start()
    hist = EventStream(m.socket, "--since", "1", "--filter", "type=service")
    streams.append(hist)
    evs = hist.until(is_removal_of("old"))
    assert evs[0]["action"] == "create" and evs[-1]["action"] == "remove"
    assert all(e["name"] == "old" for e in evs)

    # A duration before this manager's start: from etcd's history too.
    ago = EventStream(m.socket, "--since", "1h", "--filter", "type=service")
    streams.append(ago)
    assert ago.until(is_removal_of("old")) == evs

    # etcd compacts: revisions before that are gone, and the error says so.
    port = json.loads((m.state_dir / "etcd" / "ports.json").read_text())["client"]
    creds = EtcdCredentials.under(m.state_dir / "etcd" / "pki")
    tls = grpc.ssl_channel_credentials(
        creds.ca.read_bytes(), creds.client_key.read_bytes(), creds.client_cert.read_bytes()
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", tls) as ch:
        kv = rpc.KVStub(ch)
        current = kv.Range(rpc.RangeRequest(key=b"\0", range_end=b"\0", count_only=True))
        kv.Compact(rpc.CompactionRequest(revision=current.header.revision, physical=True))
    r = m.ctl("events", "--since", "1", timeout=30)
    assert r.code == 1, r
    assert "older than etcd's compaction" in r.err
    assert f"oldest revision kept is {current.header.revision}" in r.err
    r = m.ctl("events", "--since", "1h", timeout=30)
    assert r.code == 1 and "before etcd's compaction" in r.err, r

    for bad, says in (
        (["--since", "yesterday"], "invalid --since"),
        (["--filter", "type=network"], "type is one of"),
        (["--filter", "name=web"], "the only filter is type"),
    ):
        r = m.ctl("events", *bad)
        assert r.code == 1 and says in r.err, r
