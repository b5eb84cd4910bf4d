"""swarmctl's input side without a manager: flag parsers, flags -> specs, and the exit
codes of bad flags."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from google.protobuf import json_format

from shoal import defaults
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import cli, output, parse
from shoal.swarmctl import spec as specs

from .swarmctl_samples import make_service

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


def as_pb(obj: dict[str, Any], message: Any) -> Any:
    """A JSON-form value as the manager reads it (json_format refuses unknown fields)."""
    return json_format.ParseDict(obj, message)


def as_json(spec: pb.ServiceSpec) -> dict[str, Any]:
    """A stored spec as GET /services/REF/spec serves it."""
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def test_port() -> None:
    p = as_pb(parse.port("8080:80"), pb.PortConfig())
    assert (p.published_port, p.target_port, p.protocol) == (8080, 80, pb.PortConfig.TCP)
    p = as_pb(parse.port("53:5353/udp"), pb.PortConfig())
    assert (p.published_port, p.target_port, p.protocol) == (53, 5353, pb.PortConfig.UDP)
    assert as_pb(parse.port("1:65535/TCP"), pb.PortConfig()).protocol == pb.PortConfig.TCP


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


def mount(text: str) -> pb.Mount:
    m: pb.Mount = as_pb(parse.mount(text), pb.Mount())
    return m


def test_mount() -> None:
    m = mount("type=bind,source=/srv,target=/data,readonly")
    assert (m.type, m.source, m.target, m.readonly) == (pb.Mount.BIND, "/srv", "/data", True)
    m = mount("type=volume,src=db,dst=/var/lib/db")
    assert (m.type, m.source, m.target, m.readonly) == (pb.Mount.VOLUME, "db", "/var/lib/db", False)
    assert mount("source=db,target=/x").type == pb.Mount.VOLUME
    assert not mount("type=bind,source=/a,target=/b,readonly=false").readonly
    assert mount("type=bind,source=/a,target=/b,ro=1").readonly


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
    # The .proto's value names, as the JSON form carries them.
    assert pb.NodeAvailability.Value(parse.availability("drain")) == pb.AVAILABILITY_DRAIN
    assert pb.NodeAvailability.Value(parse.availability("Active")) == pb.AVAILABILITY_ACTIVE
    condition = parse.restart_condition("on-failure")
    assert pb.RestartPolicy.Condition.Value(condition) == pb.RestartPolicy.ON_FAILURE
    action = parse.failure_action("rollback")
    assert pb.UpdateConfig.FailureAction.Value(action) == pb.UpdateConfig.ROLLBACK
    order = parse.update_order("start-first")
    assert pb.UpdateConfig.Order.Value(order) == pb.UpdateConfig.START_FIRST
    with pytest.raises(ValueError, match="invalid availability 'sideways': use active, pause"):
        parse.availability("sideways")
    with pytest.raises(ValueError, match="invalid restart condition"):
        parse.restart_condition("always")


# ---------------------------------------------------------------- spec flags


def test_apply_spec_flags_changes_only_what_is_given() -> None:
    stored = as_json(make_service().service.spec)
    before = copy.deepcopy(stored)
    specs.apply_spec_flags(stored, specs.SpecFlags())
    assert stored == before

    flags = specs.SpecFlags(
        env=("A=2", "B=1"),
        publish=("8080:81",),
        mount=("type=bind,source=/a,target=/b",),
        restart_delay="1s",
        update_order="start-first",
        memory_limit="64M",
        health_cmd="true",
    )
    specs.apply_spec_flags(stored, flags)
    spec = as_pb(stored, pb.ServiceSpec())
    assert list(spec.task.container.env) == ["A=2", "B=1"]
    assert [(p.published_port, p.target_port) for p in spec.ports] == [(8080, 81), (53, 53)]
    assert spec.task.restart.delay_ms == 1_000
    assert spec.task.restart.condition == pb.RestartPolicy.ANY  # kept
    assert spec.update.order == pb.UpdateConfig.START_FIRST
    assert spec.update.parallelism == defaults.UPDATE_PARALLELISM  # kept
    assert spec.task.limits.memory_bytes == 64 * 1024**2
    assert list(spec.task.container.healthcheck.test) == ["CMD-SHELL", "true"]


def test_restart_flag_starts_from_the_defaults() -> None:
    made: dict[str, Any] = {}
    specs.apply_spec_flags(made, specs.SpecFlags(restart_max_attempts=3))
    spec = as_pb(made, pb.ServiceSpec())
    expected = defaults.restart_policy()
    expected.max_attempts = 3
    assert spec.task.restart == expected
    assert not spec.HasField("update")


def test_every_spec_flag_makes_a_spec_the_manager_reads() -> None:
    """Each flag's JSON form parses as a ServiceSpec (field and enum names right)."""
    flags = specs.SpecFlags(
        env=("A=1",), label=("k=v",), constraint=("node.role==worker",), network=("n1",),
        publish=("8080:80/udp", "published=9,target=9,mode=host"), mount=("source=v,target=/v",),
        user="1:1", workdir="/w", cpu_limit="1.5", memory_limit="1G", cpu_reservation="0.5",
        memory_reservation="1M", restart_condition="on-failure", restart_delay="1s",
        restart_max_attempts=2, restart_window="1m", update_parallelism=2, update_delay="1s",
        update_failure_action="rollback", update_order="start-first", health_cmd="true",
        health_interval="2s", health_retries=4, stop_grace_period="3s", max_replicas_per_node=2,
        rebalance=True, endpoint_mode="dnsrr", endpoint_drain="1s", cap_add=("net_admin",),
        cap_drop=("ALL",), security_opt=("seccomp=unconfined",), pids_limit=-1,
        secret=("s@2,target=/t,uid=1,gid=2,mode=0400",), config=("c,target=/c",),
    )  # fmt: skip
    assert all(f.name in flags.__dict__ for f in dataclasses.fields(flags))
    made = specs.new_service_spec("w", "img", 3, "replicated", ("sh", "-c", "x"), flags)
    spec = as_pb(made, pb.ServiceSpec())
    c = spec.task.container
    assert (spec.replicated.replicas, c.command, c.args) == (3, ["sh"], ["-c", "x"])
    assert spec.ports[0].protocol == pb.PortConfig.UDP and spec.ports[1].mode == pb.PortConfig.HOST
    assert spec.endpoint_mode == pb.ENDPOINT_DNSRR and c.endpoint_drain_ms == 1000
    assert (c.cap_add, c.cap_drop, c.seccomp, c.pids_limit) == (
        ["CAP_NET_ADMIN"], ["ALL"], "unconfined", -1
    )
    assert spec.task.restart.condition == pb.RestartPolicy.ON_FAILURE
    assert spec.update.failure_action == pb.UpdateConfig.ROLLBACK
    assert (c.secrets[0].version, c.secrets[0].pinned, c.secrets[0].mode) == (2, True, 0o400)
    assert (c.healthcheck.test, c.healthcheck.interval_ms) == (["CMD-SHELL", "true"], 2000)
    assert spec.task.limits.nano_cpus == 1_500_000_000
    # And what the manager stores comes back through the JSON form unchanged.
    assert as_pb(as_json(spec), pb.ServiceSpec()) == spec
    glob = as_pb(specs.new_service_spec("g", "i", None, "global", (), specs.SpecFlags()),
                 pb.ServiceSpec())  # fmt: skip
    assert glob.WhichOneof("mode") == "global"


def test_remove_spec_items() -> None:
    stored = as_json(make_service().service.spec)
    specs.remove_spec_items(
        stored,
        specs.RemoveFlags(
            env_rm=("A", "NOPE"),
            label_rm=("tier",),
            constraint_rm=("node.labels.zone==a",),
            network_rm=("net1",),
            publish_rm=("53/udp",),
        ),
    )
    spec = as_pb(stored, pb.ServiceSpec())
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


_PROBE = """
import sys
from click.testing import CliRunner
from shoal.swarmctl.cli import cli
codes = [CliRunner().invoke(cli, args.split()).exit_code for args in sys.argv[1:]]
print(codes, "grpc" in sys.modules)
"""


def test_help_and_usage_errors_do_not_load_grpc() -> None:
    # gRPC is most of swarmctl's start-up time; only a request needs it.
    args = ["--help", "service --help", "service create --help", "task ls --bad", "frobnicate"]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True
    )
    assert proc.stdout.split("\n")[0] == "[0, 0, 0, 2, 2] False", proc.stdout + proc.stderr
