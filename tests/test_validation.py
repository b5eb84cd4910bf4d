"""What the control API refuses, at the validator: each bad value one clear line; the
values Shoal itself must keep accepting (the big-spec case of issue 10) still pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import defaults
from shoal.manager import validation as v
from shoal.proto import objects_pb2 as pb


def good() -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name="web"))
    spec.task.container.image = "busybox:1.36"
    defaults.fill_service_spec(spec)
    return spec


Edit = Callable[[pb.ServiceSpec], object]
C = "task.container"

BAD_SERVICES: list[tuple[Edit, str]] = [
    (lambda s: s.task.container.healthcheck.__setattr__("interval_ms", -1), "cannot be negative"),
    (lambda s: s.task.container.healthcheck.__setattr__("interval_ms", 5), "between 100ms"),
    (lambda s: s.task.container.healthcheck.__setattr__("timeout_ms", -5), "cannot be negative"),
    (lambda s: s.task.container.healthcheck.__setattr__("retries", -1), "retries must be"),
    (lambda s: s.task.container.healthcheck.test.extend(["CMD"]), "needs a command"),
    (lambda s: s.task.container.__setattr__("stop_grace_period_ms", -1), "cannot be negative"),
    (lambda s: s.task.container.__setattr__("stop_grace_period_ms", 2**62), "365 days"),
    (lambda s: s.task.restart.__setattr__("delay_ms", 2**63 - 1), "365 days"),
    (lambda s: s.update.__setattr__("monitor_ms", -3), "cannot be negative"),
    (lambda s: s.task.limits.__setattr__("nano_cpus", 1_000_000), "at least 0.01 CPU"),
    (lambda s: s.task.limits.__setattr__("nano_cpus", 10**16), "at most 4096 CPUs"),
    (lambda s: s.task.limits.__setattr__("memory_bytes", 2**62), "at most 1PiB"),
    (lambda s: s.task.restart.__setattr__("condition", 7), "unknown restart condition 7"),
    (lambda s: s.update.__setattr__("failure_action", -1), "unknown update failure action"),
    (lambda s: s.update.__setattr__("order", 9), "unknown update order 9"),
    (lambda s: s.ports.add(protocol=5, target_port=80), "unknown port protocol 5"),
    (lambda s: s.task.container.mounts.add(type=3, source="/", target="/x"), "unknown mount type"),
    (
        lambda s: [s.task.container.mounts.add(type=1, source="v", target="/d") for _ in "ab"],
        "used twice",
    ),
    (lambda s: s.task.container.env.append("A\x1b[2J=1"), "invalid env"),
    (lambda s: s.task.container.env.append("A=x\x00y"), "NUL"),
    (lambda s: s.task.container.args.append("a\x00"), "NUL"),
    (lambda s: s.task.container.env.extend(f"K{i}=1" for i in range(1001)), "too many env"),
    (lambda s: s.task.container.args.extend("a" for _ in range(1001)), "too many command"),
    (lambda s: s.task.container.env.extend(f"K{i}=" + "v" * 999 for i in range(300)), "too large"),
    (lambda s: s.annotations.labels.update({f"k{i}": "" for i in range(257)}), "too many"),
    (lambda s: s.annotations.labels.__setitem__("k", "\x1b]0;pwned\x07"), "control character"),
    (lambda s: s.task.container.labels.__setitem__("bad key", "v"), "invalid container label"),
    (lambda s: s.task.placement.constraints.append("node.labels.a==\x1b[1m"), "control char"),
    (lambda s: s.task.container.__setattr__("dir", "/a\nb"), "control character"),
    (lambda s: s.task.container.__setattr__("user", "u" * 300), "invalid user"),
    (lambda s: s.task.container.__setattr__("pids_limit", 2**40), "pids limit must be at most"),
    (lambda s: s.task.networks.extend(pb.NetworkAttachmentConfig() for _ in range(33)), "many"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_SERVICES)
def test_bad_service_values_refused_in_one_line(edit: Edit, message: str) -> None:
    spec = good()
    edit(spec)
    with pytest.raises(v.InvalidSpec) as err:
        v.check_service_spec(spec)
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 400, text


def test_image_names_the_puller_could_not_parse_are_refused() -> None:
    """Found by the property test: `A/0` matched the reference grammar (an upper-case
    "domain"), but with no '.' or ':' it is a repository component to the puller."""
    for image in ("A/0", "Foo/bar:1", "MyReg/app"):
        with pytest.raises(v.InvalidSpec, match="invalid image reference"):
            v.check_image(image)
    for image in ("localhost/app", "Reg.example:5000/app", "a/b/c:1", "127.0.0.1:9/x"):
        v.check_image(image)


def test_what_shoal_uses_stays_accepted() -> None:
    spec = good()
    # Issue 10's big spec: 300 env vars of 250 bytes (~77 KB).
    spec.task.container.env.extend(f"K{i}=" + "v" * 248 for i in range(300))
    spec.task.container.env.append("CERT=-----BEGIN-----\nabc\n-----END-----")  # newline ok
    hc = spec.task.container.healthcheck
    hc.test.extend(["CMD-SHELL", "test -f /tmp/ok"])
    hc.interval_ms, hc.timeout_ms, hc.retries = 300, 1, 3
    spec.task.limits.nano_cpus = 10_000_000
    spec.task.container.args.append("echo 'a\nb'")
    spec.task.container.mounts.add(type=pb.Mount.BIND, source="/srv/data", target="/data")
    spec.task.container.mounts.add(type=pb.Mount.VOLUME, source="cache", target="/cache")
    v.check_service_spec(spec)


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("0.0.0.0/0", "reserved"),
        ("0.0.0.0/8", "reserved"),
        ("127.0.0.0/24", "reserved"),
        ("126.0.0.0/7", "reserved"),
        ("169.254.0.0/24", "reserved"),
        ("224.0.0.0/24", "reserved"),
        ("240.0.0.0/8", "reserved"),
        ("255.255.255.0/29", "reserved"),
        ("10.0.0.1/24", "host bits set"),
        ("10.0.0.0/30", "too small"),
        ("fd00::/64", "only IPv4"),
    ],
)
def test_bad_subnets_refused(subnet: str, message: str) -> None:
    with pytest.raises(v.InvalidSpec, match=message):
        v.check_subnet(subnet)


def test_private_subnets_accepted() -> None:
    for subnet in ("10.0.0.0/8", "172.16.0.0/12", "192.168.7.0/24", "100.64.0.0/29"):
        assert str(v.check_subnet(subnet)) == subnet


def cluster(**edits: int) -> pb.ClusterSpec:
    spec = defaults.cluster_spec()
    fields = {
        "period": (spec.dispatcher, "heartbeat_period_ms"),
        "misses": (spec.dispatcher, "heartbeat_misses"),
        "history": (spec.orchestration, "task_history_limit"),
        "expiry": (spec.ca, "node_cert_expiry_ms"),
    }
    for key, value in edits.items():
        group, name = fields[key]
        setattr(group, name, value)
    return spec


@pytest.mark.parametrize(
    "edits",
    [
        {"period": -1},
        {"period": 50},
        {"period": 2**40},
        {"misses": 0},
        {"misses": 10_000},
        {"history": 2**31},
        {"expiry": 1},
        {"expiry": 2**62},
    ],
)
def test_bad_cluster_values_refused(edits: dict[str, int]) -> None:
    with pytest.raises(v.InvalidSpec):
        v.check_cluster_spec(cluster(**edits))
    v.check_cluster_spec(defaults.cluster_spec())


def test_node_spec_enums_and_labels() -> None:
    for spec in (
        pb.NodeSpec(availability=3),
        pb.NodeSpec(desired_role=2),
        pb.NodeSpec(labels={"zone": "\x1b[31ma"}),
        pb.NodeSpec(labels={"": "a"}),
    ):
        with pytest.raises(v.InvalidSpec):
            v.check_node_spec(spec)
    v.check_node_spec(pb.NodeSpec(availability=pb.AVAILABILITY_DRAIN, labels={"zone": "a b"}))


@given(st.text(max_size=300))
def test_hostnames_that_pass_are_plain(name: str) -> None:
    """Whatever passes shows as itself in a terminal: no control or space characters."""
    try:
        v.check_hostname(name)
    except v.InvalidSpec as err:
        assert "\n" not in str(err)
        return
    assert name and len(name) <= 253 and name.isascii() and name.isprintable()
    assert " " not in name


def test_agent_reports_are_cleaned() -> None:
    desc = pb.NodeDescription(hostname="\x1b[2Jevil", os="linux\x1b[0m", arch="x86_64")
    out = v.clean_description(desc, joined_as="w1")
    assert (out.hostname, out.os, out.arch) == ("w1", "linux[0m", "x86_64")
    assert v.clean_description(pb.NodeDescription(hostname="w2"), "w1").hostname == "w2"


def accepted(check: Callable[[str], object], text: str) -> bool:
    try:
        check(text)
    except v.InvalidSpec:
        return False
    return True


NAMED_CHECKS: list[Callable[[str], object]] = [
    lambda t: v.check_name("service", t),
    v.check_hostname,
    v.check_image,
    lambda t: v.check_labels("node", {t: "v"}),
    lambda t: v.check_labels("node", {"k": t}),
    lambda t: v.check_service_spec(with_env(t.replace("=", "") + "=1")),  # t is the key
]


def with_env(entry: str) -> pb.ServiceSpec:
    spec = good()
    spec.task.container.env.append(entry)
    return spec


@given(
    st.sampled_from(range(len(NAMED_CHECKS))),
    st.text(st.characters(codec="ascii"), max_size=12).map(lambda t: t or "a"),
    st.sampled_from(["", "\n", "\r\n", "\x00", "\x1b"]),
)
def test_accepted_names_have_no_control_characters(i: int, text: str, tail: str) -> None:
    """Names, labels and env keys that pass show as themselves in a terminal (a regex's
    `$` also matches before a final newline: `web\\n` passed as a service name)."""
    value = text + tail
    if accepted(NAMED_CHECKS[i], value):
        assert value.isprintable(), repr(value)
