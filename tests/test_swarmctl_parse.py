"""swarmctl's pure parts: flag parsers, JSON views, tables, and exit codes that need no manager."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal import defaults
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import cli, output, parse

# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("5s", 5_000),
        ("1m30s", 90_000),
        ("500ms", 500),
        ("2h", 7_200_000),
        ("1h2m3s4ms", 3_723_004),
        ("1.5s", 1_500),
        ("10", 10_000),
        ("0.25", 250),
        ("0", 0),
        (" 5s ", 5_000),
    ],
)
def test_duration_ms(text: str, ms: int) -> None:
    assert parse.duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "soon", "-5s", "5x", "s", "5 s", "1m 30s", "5s5", "1d"])
def test_duration_ms_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse.duration_ms(text)


def test_duration_round_trips_through_output() -> None:
    for text in ("500ms", "5s", "1m30s", "2h", "1h2m3s4ms"):
        assert output.duration(parse.duration_ms(text)) == text
    assert output.duration(0) == "0s"


# ---------------------------------------------------------------- memory and CPUs


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("64k", 64 * 1024),
        ("64K", 64 * 1024),
        ("512M", 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("512MiB", 512 * 1024**2),
        ("1G", 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("1t", 1024**4),
        ("0", 0),
    ],
)
def test_memory_bytes(text: str, size: int) -> None:
    assert parse.memory_bytes(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1M", "1X", "M", "1 G B", "1.G"])
def test_memory_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid memory size"):
        parse.memory_bytes(text)


@pytest.mark.parametrize(
    ("text", "nano"), [("1.5", 1_500_000_000), ("2", 2_000_000_000), ("0.001", 1_000_000), ("0", 0)]
)
def test_nano_cpus(text: str, nano: int) -> None:
    assert parse.nano_cpus(text) == nano


@pytest.mark.parametrize("text", ["", "many", "-1", "nan", "inf"])
def test_nano_cpus_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid CPU count"):
        parse.nano_cpus(text)


# ---------------------------------------------------------------- K=V, scale pairs, users


def test_key_value() -> None:
    assert parse.key_value("A=1", "env") == ("A", "1")
    assert parse.key_value("A=", "env") == ("A", "")
    assert parse.key_value("URL=a=b", "env") == ("URL", "a=b")


@pytest.mark.parametrize("text", ["NOVALUE", "=1", "", " A=1"])
def test_key_value_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=f"invalid env {text!r}: expected KEY=VALUE"):
        parse.key_value(text, "env")


def test_scale_pair() -> None:
    assert parse.scale_pair("web=3") == ("web", 3)
    assert parse.scale_pair("web=0") == ("web", 0)
    for bad in ("web", "web=", "=3", "web=-1", "web=x"):
        with pytest.raises(ValueError, match="expected NAME=REPLICAS"):
            parse.scale_pair(bad)


@pytest.mark.parametrize("text", ["1000", "1000:1000", "0:0", "app", "app:staff", "_x:1"])
def test_user(text: str) -> None:
    assert parse.user(text) == text


@pytest.mark.parametrize("text", ["", ":", "1000:", ":1000", "a:b:c", "bad name", "4294967296"])
def test_user_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid user"):
        parse.user(text)


# ---------------------------------------------------------------- ports and mounts


def test_port() -> None:
    p = parse.port("8080:80")
    assert (p.published_port, p.target_port, p.protocol) == (8080, 80, pb.PortConfig.TCP)
    p = parse.port("53:5353/udp")
    assert (p.published_port, p.target_port, p.protocol) == (53, 5353, pb.PortConfig.UDP)
    assert parse.port("1:65535/TCP").protocol == pb.PortConfig.TCP


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("80:99999", "ports are 1-65535"),
        ("0:80", "ports are 1-65535"),
        ("80", "expected PUBLISHED:TARGET"),
        ("a:80", "expected PUBLISHED:TARGET"),
        ("80:80/sctp", "tcp or udp"),
        ("", "expected PUBLISHED:TARGET"),
    ],
)
def test_port_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse.port(text)


def test_mount() -> None:
    m = parse.mount("type=bind,source=/srv,target=/data,readonly")
    assert (m.type, m.source, m.target, m.readonly) == (pb.Mount.BIND, "/srv", "/data", True)
    m = parse.mount("type=volume,src=db,dst=/var/lib/db")
    assert (m.type, m.source, m.target, m.readonly) == (pb.Mount.VOLUME, "db", "/var/lib/db", False)
    assert parse.mount("source=db,target=/x").type == pb.Mount.VOLUME
    assert not parse.mount("type=bind,source=/a,target=/b,readonly=false").readonly
    assert parse.mount("type=bind,source=/a,target=/b,ro=1").readonly


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("type=tmpfs,source=a,target=/b", "type is bind or volume"),
        ("type=bind,target=/b", "source and target are required"),
        ("type=bind,source=/a", "source and target are required"),
        ("type=bind,source=/a,target=/b,colour=red", "unknown field"),
        ("type=bind,source=/a,target=/b,readonly=maybe", "readonly is true or false"),
        ("", "unknown field"),
    ],
)
def test_mount_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse.mount(text)


# ---------------------------------------------------------------- enum names


def test_enum_names() -> None:
    assert parse.availability("drain") == pb.AVAILABILITY_DRAIN
    assert parse.availability("Active") == pb.AVAILABILITY_ACTIVE
    assert parse.restart_condition("on-failure") == pb.RestartPolicy.ON_FAILURE
    assert parse.failure_action("rollback") == pb.UpdateConfig.ROLLBACK
    assert parse.update_order("start-first") == pb.UpdateConfig.START_FIRST
    with pytest.raises(ValueError, match="invalid availability 'sideways': use active, pause"):
        parse.availability("sideways")
    with pytest.raises(ValueError, match="invalid restart condition"):
        parse.restart_condition("always")


# ---------------------------------------------------------------- JSON views

SERVICE_KEYS = {
    "id",
    "name",
    "image",
    "mode",
    "replicas",
    "running",
    "networks",
    "ports",
    "version",
}
TASK_KEYS = {
    "id",
    "service",
    "slot",
    "node",
    "node_hostname",
    "desired_state",
    "state",
    "error",
    "image",
    "addresses",
    "container_id",
}
NODE_KEYS = {"id", "hostname", "role", "status", "availability", "addr", "labels"}
NETWORK_KEYS = {"id", "name", "driver", "subnet", "vni"}
CLUSTER_KEYS = {"id", "name", "created_at"}


def make_service(mode: str = "replicated") -> api.ServiceInfo:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name="web", labels={"tier": "front"}))
    spec.task.container.image = "busybox:latest"
    spec.task.container.env.append("A=1")
    spec.task.networks.add(target="net1")
    spec.task.networks.add(target="net-unknown")
    spec.ports.append(parse.port("8080:80"))
    spec.ports.append(parse.port("53:53/udp"))
    spec.task.placement.constraints.append("node.labels.zone==a")
    if mode == "global":
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = 3
    defaults.fill_service_spec(spec)
    svc = pb.Service(id="s" * 25, spec=spec, spec_version=2)
    svc.meta.version = 42
    svc.meta.created_at_ms = 1_700_000_000_000
    return api.ServiceInfo(service=svc, desired=3, running=2, running_updated=2)


def test_service_view() -> None:
    view = output.service_view(make_service(), {"net1": "front"})
    assert view.keys() >= SERVICE_KEYS
    assert view["mode"] == "replicated" and view["replicas"] == 3 and view["running"] == 2
    assert view["networks"] == ["front", "net-unknown"]
    assert view["ports"] == [
        {"published": 8080, "target": 80, "protocol": "tcp", "mode": "ingress"},
        {"published": 53, "target": 53, "protocol": "udp", "mode": "ingress"},
    ]
    assert view["version"] == 42
    assert view["labels"] == {"tier": "front"} and view["env"] == ["A=1"]
    assert view["constraints"] == ["node.labels.zone==a"]
    assert view["created_at"] == "2023-11-14T22:13:20Z"
    assert view["restart_policy"]["condition"] == "any"
    assert view["update_config"]["failure_action"] == "pause"
    assert view["update_config"]["order"] == "stop-first"
    assert view["update_status"] is None
    json.dumps(view)  # JSON-ready as it is


def test_global_service_view_has_null_replicas() -> None:
    view = output.service_view(make_service("global"), {})
    assert view["mode"] == "global" and view["replicas"] is None


def test_task_view() -> None:
    t = pb.Task(id="t" * 25, service_id="s" * 25, service_name="web", slot=2, node_id="n1")
    t.spec.container.image = "busybox"
    t.desired_state = pb.RUNNING
    t.status.state = pb.REJECTED
    t.status.err = "no suitable node"
    t.status.container.container_id = "c1"
    t.status.container.exit_code = 3
    t.networks.add(network_id="net1", addresses=["10.0.1.5/24"])
    t.networks.add(network_id="net2", addresses=["10.0.2.7/24"])
    view = output.task_view(t, {"n1": "worker1"})
    assert view.keys() >= TASK_KEYS
    assert view["node"] == "n1" and view["node_hostname"] == "worker1"
    assert view["desired_state"] == "running" and view["state"] == "rejected"
    assert view["error"] == "no suitable node"
    assert view["addresses"] == ["10.0.1.5/24", "10.0.2.7/24"]
    assert view["container_id"] == "c1" and view["exit_code"] == 3

    pending = output.task_view(pb.Task(id="t2", slot=1), {})
    assert pending["node"] is None and pending["node_hostname"] is None
    assert pending["state"] == "new" and pending["container_id"] == ""
    assert pending["exit_code"] is None


def test_node_view() -> None:
    n = pb.Node(id="n1", role=pb.ROLE_MANAGER)
    n.description.hostname = "h1"
    n.status.state = pb.NODE_READY
    n.status.addr = "10.0.0.1"
    n.spec.availability = pb.AVAILABILITY_DRAIN
    n.spec.labels["zone"] = "a"
    view = output.node_view(n)
    assert view.keys() >= NODE_KEYS and "manager_status" not in view
    assert (view["role"], view["status"], view["availability"]) == ("manager", "ready", "drain")
    assert view["addr"] == "10.0.0.1" and view["labels"] == {"zone": "a"}
    n.manager_status.leader = True
    assert output.node_view(n)["manager_status"]["leader"] is True
    down = output.node_view(pb.Node(id="n2", status=pb.NodeStatus(state=pb.NODE_DOWN)))
    assert (down["role"], down["status"], down["availability"]) == ("worker", "down", "active")


def test_network_view_prefers_the_allocated_subnet() -> None:
    n = pb.Network(id="x", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    n.spec.annotations.name = "front"
    n.spec.driver = "overlay"
    view = output.network_view(n)
    assert view.keys() >= NETWORK_KEYS
    assert (view["subnet"], view["vni"], view["gateway"]) == ("10.0.1.0/24", 4097, "10.0.1.1")
    n.subnet = ""
    n.spec.subnet = "10.9.0.0/16"
    assert output.network_view(n)["subnet"] == "10.9.0.0/16"


def test_cluster_views() -> None:
    c = pb.Cluster(id="c1", spec=defaults.cluster_spec())
    c.meta.created_at_ms = 1_700_000_000_000
    c.join_tokens.worker = "SWMTKN-1-w"
    c.join_tokens.manager = "SWMTKN-1-m"
    view = output.cluster_view(c)
    assert view.keys() >= CLUSTER_KEYS
    assert view["name"] == "default" and view["created_at"] == "2023-11-14T22:13:20Z"
    assert view["task_history_limit"] == defaults.TASK_HISTORY_LIMIT
    assert "SWMTKN-1-w" not in json.dumps(view)
    assert output.join_tokens_view(c) == {"worker": "SWMTKN-1-w", "manager": "SWMTKN-1-m"}


# ---------------------------------------------------------------- tables


def test_table_is_aligned_and_plain_without_a_terminal() -> None:
    text = output.render_table(["ID", "STATUS"], [["a", "ready"], ["bbbb", None]], color=False)
    assert text == "ID     STATUS\na      ready\nbbbb\n"
    assert "\x1b[" in output.render_table(["ID", "STATUS"], [["a", "ready"]], color=True)


def test_task_rows_newest_first_per_slot() -> None:
    old = pb.Task(id="old" + "x" * 22, service_name="web", slot=1, node_id="n1")
    old.meta.created_at_ms = 1_000
    old.status.state = pb.FAILED
    old.status.timestamp_ms = 10_000
    old.status.err = "task: non-zero exit (3)"
    new = pb.Task(id="new" + "x" * 22, service_name="web", slot=1, node_id="n1")
    new.meta.created_at_ms = 2_000
    new.desired_state = new.status.state = pb.RUNNING
    new.status.timestamp_ms = 55_000
    glob = pb.Task(id="glb" + "x" * 22, service_name="agent", slot=0, node_id="n2")
    rows = output.task_rows([old, new, glob], {"n1": "h1"}, now_ms=60_000)
    assert [r[1] for r in rows] == ["agent.n2", "web.1", " \\_ web.1"]
    assert rows[1][0] == "new" + "x" * 9 and rows[1][3] == "h1"
    assert rows[1][5] == "running 5 seconds ago"
    assert rows[2][5] == "failed 50 seconds ago" and rows[2][6] == "task: non-zero exit (3)"
    assert rows[0][3] == "n2"  # no hostname known: the node ID


def test_service_rows() -> None:
    rows = output.service_rows([output.service_view(make_service(), {})])
    assert rows == [
        ["s" * 12, "web", "replicated", "2/3", "busybox:latest", "*:8080->80/tcp,*:53->53/udp"]
    ]


def test_ago() -> None:
    assert output.ago(0) == ""
    assert output.ago(1_000, now_ms=1_500) == "just now"
    assert output.ago(0 + 1, now_ms=3_600_001) == "1 hour ago"
    assert output.ago(1, now_ms=2 * 86_400_000 + 1) == "2 days ago"


# ---------------------------------------------------------------- convergence


def test_converged() -> None:
    info = make_service()
    assert not cli.converged(info)  # 2/3
    info.running = info.running_updated = 3
    assert cli.converged(info)
    info.running_updated = 2  # one task still runs the old spec
    assert not cli.converged(info)
    g = make_service("global")
    g.desired = g.running = g.running_updated = 0
    assert not cli.converged(g)  # nothing placed yet
    g.desired = g.running = g.running_updated = 2
    assert cli.converged(g)


# ---------------------------------------------------------------- spec flags


def test_apply_spec_flags_changes_only_what_is_given() -> None:
    spec = make_service().service.spec
    before = pb.ServiceSpec()
    before.CopyFrom(spec)
    cli.apply_spec_flags(spec, cli.SpecFlags())
    assert spec == before

    flags = cli.SpecFlags(
        env=("A=2", "B=1"),
        publish=("8080:81",),
        mount=("type=bind,source=/a,target=/b",),
        restart_delay="1s",
        update_order="start-first",
        memory_limit="64M",
        health_cmd="true",
    )
    cli.apply_spec_flags(spec, flags)
    assert list(spec.task.container.env) == ["A=2", "B=1"]
    assert [(p.published_port, p.target_port) for p in spec.ports] == [(8080, 81), (53, 53)]
    assert spec.task.restart.delay_ms == 1_000
    assert spec.task.restart.condition == pb.RestartPolicy.ANY  # kept
    assert spec.update.order == pb.UpdateConfig.START_FIRST
    assert spec.update.parallelism == defaults.UPDATE_PARALLELISM  # kept
    assert spec.task.limits.memory_bytes == 64 * 1024**2
    assert list(spec.task.container.healthcheck.test) == ["CMD-SHELL", "true"]


def test_restart_flag_starts_from_the_defaults() -> None:
    spec = pb.ServiceSpec()
    cli.apply_spec_flags(spec, cli.SpecFlags(restart_max_attempts=3))
    expected = defaults.restart_policy()
    expected.max_attempts = 3
    assert spec.task.restart == expected
    assert not spec.HasField("update")


def test_remove_spec_items() -> None:
    spec = make_service().service.spec
    cli.remove_spec_items(
        spec,
        cli.RemoveFlags(
            env_rm=("A", "NOPE"),
            label_rm=("tier",),
            constraint_rm=("node.labels.zone==a",),
            network_rm=("net1",),
            publish_rm=("53/udp",),
        ),
    )
    assert list(spec.task.container.env) == []
    assert dict(spec.annotations.labels) == {}
    assert list(spec.task.placement.constraints) == []
    assert [a.target for a in spec.task.networks] == ["net-unknown"]
    assert [p.published_port for p in spec.ports] == [8080]


# ---------------------------------------------------------------- exit codes without a manager


CREATE = ["service", "create", "--name", "w", "--image", "b"]


def run(*args: str, socket: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.cli, ["--socket", str(socket), *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["service", "create", "--image", "busybox"],
        ["service", "frobnicate"],
        ["service", "scale", "w"],
        ["service", "create", "--name", "w", "--image", "b", "--mode", "global", "--replicas", "2"],
        ["service", "update", "w", "--rollback", "--image", "b"],
        ["node", "update", "x", "--availability", "sideways"],
        ["node", "update", "x"],
        ["cluster", "join-token", "boss"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    code, out, _ = run(*args, socket=tmp_path / "none.sock")
    assert code == 2 and out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["service", "create", "--name", "w", "--image", "b", "--timeout", "x"],
            "invalid duration",
        ),
        (["service", "create", "--name", "w", "--image", "b", "--env", "X"], "invalid env 'X'"),
        (["service", "create", "--name", "w", "--image", "b", "--replicas", "-1"], "0 or more"),
        (["service", "scale", "w=100001"], "replicas must be between 0 and 100000"),
        (["service", "ls"], "cannot reach the manager at"),
        (["service", "rm", "a", "b"], "cannot reach the manager at"),
    ],
)
def test_failures_exit_1_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    code, out, err = run(*args, socket=tmp_path / "none.sock")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith("Error: ") for line in lines)
    assert message in lines[0]
    if args[:2] != ["service", "rm"]:
        assert len(lines) == 1
    else:
        assert len(lines) == 2  # one per name, and it went on past the first


def test_socket_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_SOCKET", str(tmp_path / "env.sock"))
    result = CliRunner().invoke(cli.cli, ["node", "ls"])
    assert result.exit_code == 1
    assert f"cannot reach the manager at {tmp_path / 'env.sock'}: " in result.stderr
