"""swarmctl against a real manager: exit codes, JSON keys, and rejected input writing nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.procs import ManagerProcess, swarmctl
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import EtcdConnection, Store

from .helpers import make_node
from .swarmctl_samples import CLUSTER_KEYS, NETWORK_KEYS, NODE_KEYS, SERVICE_KEYS, TASK_KEYS

pytestmark = pytest.mark.integration


@pytest.fixture
async def shared(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    s = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    try:
        yield s
    finally:
        await s.close()


def svc(*flags: str) -> list[str]:
    return ["service", "create", "--name", "w", "--image", "busybox", *flags, "-d"]


INVALID = [
    (
        ["service", "create", "--name", "bad name", "--image", "busybox", "-d"],
        "invalid service name",
    ),
    (["service", "create", "--name", "-x", "--image", "busybox", "-d"], "invalid service name"),
    (["service", "create", "--name", "w", "--image", "Busy Box", "-d"], "invalid image reference"),
    (["service", "create", "--name", "w", "--image", "busybox:", "-d"], "invalid image reference"),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--replicas", "-1", "-d"],
        "replicas must be 0 or more",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--replicas", "1000000", "-d"],
        "replicas must be between 0 and 100000",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--env", "NOVALUE", "-d"],
        "invalid env 'NOVALUE'",
    ),
    (
        [
            "service",
            "create",
            "--name",
            "w",
            "--image",
            "busybox",
            "--constraint",
            "node.x=y",
            "-d",
        ],
        "invalid constraint",
    ),
    (
        [
            "service",
            "create",
            "--name",
            "w",
            "--image",
            "busybox",
            "--constraint",
            "node.role==boss",
            "-d",
        ],
        "node.role is manager or worker",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--network", "nope", "-d"],
        "network 'nope' not found",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--memory-limit", "1k", "-d"],
        "memory limit must be at least 6MiB",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--memory-limit", "lots", "-d"],
        "invalid memory size",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--publish", "80:99999", "-d"],
        "ports are 1-65535",
    ),
    (
        [
            "service",
            "create",
            "--name",
            "w",
            "--image",
            "busybox",
            "--mount",
            "type=bind,source=rel,target=/x",
            "-d",
        ],
        "must be an absolute path",
    ),
    (
        ["service", "create", "--name", "w", "--image", "busybox", "--restart-delay", "soon", "-d"],
        "invalid duration",
    ),
    (
        ["service", "create", "--name", "exists", "--image", "busybox", "-d"],
        "service 'exists' already exists",
    ),
    (["service", "update", "nope", "--image", "busybox"], "service 'nope' not found"),
    (["service", "scale", "nope=3"], "service 'nope' not found"),
    (["service", "rm", "nope"], "service 'nope' not found"),
    (["network", "create", "--subnet", "10.1.0.0/33", "n2"], "invalid subnet"),
    (["network", "create", "--subnet", "10.1.0.1/24", "n2"], "invalid subnet"),
    (["network", "create", "--driver", "bridge", "n2"], "unknown network driver"),
    (["network", "create", "front"], "network 'front' already exists"),
    (["network", "create", "--subnet", "10.77.1.0/24", "n3"], "overlaps network 'front'"),
    (["network", "rm", "front"], "in use by service(s) exists"),
    # Values the CLI parses and the API refuses (issue 12: the API is the rule).
    (svc("--cpu-limit", "0.001"), "cpu limit must be at least 0.01 CPU"),
    (svc("--health-cmd", "true", "--health-interval", "10ms"), "between 100ms and 365 days"),
    (svc("--stop-grace-period", "9000h"), "stop grace period must be 0"),
    (svc("--label", "k=\x1b[31mred"), "contains a control character"),
    (svc("--env", "A\x1b=1"), "invalid env"),
    (["network", "create", "--subnet", "127.0.0.0/16", "n2"], "overlaps 127.0.0.0/8"),
    (["network", "create", "--subnet", "0.0.0.0/0", "n2"], "reserved"),
    (["node", "update", "n1", "--label-add", "k=a\x07"], "contains a control character"),
    (["node", "update", "nope", "--availability", "drain"], "node 'nope' not found"),
    (["node", "rm", "n1"], "is ready: stop its agent first"),
    (["task", "inspect", "nope"], "task 'nope' not found"),
]


async def test_invalid_input_exit_1_and_etcd_unchanged(
    manager: ManagerProcess, shared: Store
) -> None:
    await shared.create(make_node("n1"))
    assert manager.ctl("network", "create", "--subnet", "10.77.0.0/16", "front").code == 0
    assert (
        manager.ctl(
            "service",
            "create",
            "--name",
            "exists",
            "--image",
            "busybox",
            "--network",
            "front",
            "-d",
        ).code
        == 0
    )
    before = await shared.revision()
    for args, message in INVALID:
        r = manager.ctl(*args)
        assert r.code == 1, (args, r.code, r.err)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, r.err)
        assert message in lines[0], (args, lines[0])
        assert await shared.revision() == before, f"{args} wrote to etcd"


def test_usage_errors_exit_2(manager: ManagerProcess) -> None:
    for args in (
        ["service", "create", "--image", "busybox"],
        ["service", "frobnicate"],
        ["node", "update", "x", "--availability", "sideways"],
        ["service", "scale", "w"],
        ["cluster", "join-token", "boss"],
    ):
        assert manager.ctl(*args).code == 2, args


def test_unreachable_manager(tmp_path: Path) -> None:
    r = swarmctl(tmp_path / "none.sock", "service", "ls")
    assert r.code == 1
    assert r.err.startswith("Error: cannot reach the manager at")


@pytest.fixture
async def web(manager: ManagerProcess, shared: Store) -> str:
    """A worker node n1 (zone=a), a network `front`, and service `web` (2 replicas on
    it, port 8080, detached); its ID."""
    await shared.create(make_node("n1", {"zone": "a"}))
    assert manager.ctl("network", "create", "front").code == 0
    r = manager.ctl(
        "service",
        "create",
        "--name",
        "web",
        "--image",
        "busybox:latest",
        "--replicas",
        "2",
        "--network",
        "front",
        "--publish",
        "8080:80",
        "--env",
        "A=1",
        "-d",
        "sleep",
        "1000",
    )
    assert r.code == 0, r.err
    return r.out.strip()


async def test_service_json_keys_and_quiet(manager: ManagerProcess, web: str) -> None:
    (svc,) = json.loads(manager.ctl("service", "ls", "--format", "json").out)
    assert SERVICE_KEYS <= svc.keys()
    assert svc["id"] == web and svc["mode"] == "replicated" and svc["replicas"] == 2
    assert svc["networks"] == ["front"]
    assert svc["ports"] == [{"published": 8080, "target": 80, "protocol": "tcp", "mode": "ingress"}]
    assert json.loads(manager.ctl("service", "inspect", "web", "--format", "json").out)["id"] == web
    assert manager.ctl("service", "ls", "-q").out.split() == [web]


async def test_task_json_keys(manager: ManagerProcess, web: str) -> None:
    tasks = json.loads(manager.ctl("service", "ps", "web", "--format", "json").out)
    assert len(tasks) == 2
    for t in tasks:
        assert TASK_KEYS <= t.keys()
        assert t["service"] == web and t["desired_state"] == "running"
        assert t["state"] == "assigned" and t["node_hostname"] == "n1"
        assert t["addresses"][0].endswith("/24")


async def test_node_json_keys_and_update(manager: ManagerProcess, web: str) -> None:
    (node,) = [
        n
        for n in json.loads(manager.ctl("node", "ls", "--format", "json").out)
        if n["role"] == "worker"
    ]
    assert NODE_KEYS <= node.keys()
    assert node["status"] == "ready" and node["labels"] == {"zone": "a"}
    assert (
        manager.ctl(
            "node", "update", "n1", "--availability", "drain", "--label-add", "disk=ssd"
        ).code
        == 0
    )
    node = json.loads(manager.ctl("node", "inspect", "n1", "--format", "json").out)
    assert node["availability"] == "drain" and node["labels"] == {"zone": "a", "disk": "ssd"}


async def test_network_and_cluster_json_keys(manager: ManagerProcess, web: str) -> None:
    (net,) = json.loads(manager.ctl("network", "ls", "--format", "json").out)
    assert NETWORK_KEYS <= net.keys()
    assert net["driver"] == "overlay" and net["vni"] >= 4096
    cluster = json.loads(manager.ctl("cluster", "inspect", "--format", "json").out)
    assert CLUSTER_KEYS <= cluster.keys()
    tokens = json.loads(manager.ctl("cluster", "join-token", "worker", "--format", "json").out)
    assert tokens["worker"].startswith("SWMTKN-1-") and tokens["manager"] != tokens["worker"]
    rotated = manager.ctl("cluster", "join-token", "worker", "--rotate", "-q").out.strip()
    assert rotated != tokens["worker"]


def _stable(view: dict[str, Any]) -> dict[str, Any]:
    """A view without its times (a heartbeat may land between two calls)."""
    return {k: v for k, v in view.items() if not k.endswith("_at")}


async def test_every_ls_quiet_and_inspect_json(manager: ManagerProcess, web: str) -> None:
    """`-q` is the IDs of `--format json`, and `inspect --format json` the same object as
    plain `inspect`, for every kind."""
    for group in ("service", "node", "network", "task"):
        ids = [v["id"] for v in json.loads(manager.ctl(group, "ls", "--format", "json").out)]
        assert ids and manager.ctl(group, "ls", "-q").out.split() == ids, group
        assert manager.ctl(group, "ls", "-q", "--format", "json").out.split() == ids, group
        shown = json.loads(manager.ctl(group, "inspect", ids[0], "--format", "json").out)
        assert shown["id"] == ids[0], group
        plain = json.loads(manager.ctl(group, "inspect", ids[0]).out)
        assert _stable(plain) == _stable(shown), group


async def test_create_waits_then_rm(manager: ManagerProcess, web: str) -> None:
    # Without -d, create waits; with no worker running tasks it times out cleanly.
    r = manager.ctl("service", "create", "--name", "slow", "--image", "busybox", "--timeout", "1s")
    assert r.code == 1
    assert "did not converge within 1s: 0/1 running" in r.err
    assert manager.ctl("service", "rm", "web", "slow").code == 0
    assert manager.ctl("service", "ls", "-q").out == ""
