"""Hypothesis strategies for control API requests: a valid request with up to a few of
its fields replaced by wild values (any int of the field's width, any text, huge
lists), so the fuzz reaches past the first check and also lands accepted requests."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from shoal.manager import validation
from shoal.proto import objects_pb2 as pb

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# Edges first: hypothesis finds them anyway, this finds them in few examples.
WILD_INT64 = st.one_of(st.sampled_from([-1, 0, 1, 99, 2**31, 2**62, 2**63 - 1, -(2**63)]), INT64)
TEXT = st.text(max_size=40)
NASTY = st.sampled_from(
    ["", " ", "\x1b[31mred", "a\x00b", "a\nb", "web\n", "../..", "x" * 5000, "é"]
)
WILD_TEXT = st.one_of(NASTY, TEXT)

# The only registry a request may name that passes validation: nothing listens there, so
# pinning fails at once (a fuzzed name must never make the manager contact the world).
SAFE_IMAGES = ("127.0.0.1:9/app", "127.0.0.1:9/app:1.0", "127.0.0.1:9/lib/x@sha256:" + "a" * 64)


def safe_image(image: str) -> str:
    """`image` if the API refuses it, else a loopback one (see SAFE_IMAGES)."""
    if image in SAFE_IMAGES:
        return image
    try:
        validation.check_image(image)
    except validation.InvalidSpec:
        return image
    return SAFE_IMAGES[0]


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)
LABEL_KEYS = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
ENV = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}=[ -~]{0,20}", fullmatch=True)
DURATION = st.integers(0, 600_000)


@st.composite
def valid_service(draw: st.DrawFn, networks: tuple[str, ...] = ()) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=draw(NAMES)))
    spec.annotations.labels.update(draw(st.dictionaries(LABEL_KEYS, PRINTABLE, max_size=3)))
    if draw(st.booleans()):
        spec.replicated.replicas = draw(st.integers(0, 5))
    else:
        getattr(spec, "global").SetInParent()
    c = spec.task.container
    c.image = draw(st.sampled_from(SAFE_IMAGES))
    c.args.extend(draw(st.lists(PRINTABLE, max_size=3)))
    c.env.extend(draw(st.lists(ENV, max_size=4)))
    if draw(st.booleans()):
        c.mounts.add(type=pb.Mount.VOLUME, source=draw(NAMES), target="/data")
    if draw(st.booleans()):
        c.mounts.add(type=pb.Mount.BIND, source="/tmp/shoal-fuzz", target="/mnt", readonly=True)
    if draw(st.booleans()):
        c.healthcheck.test.extend(["CMD-SHELL", "true"])
        c.healthcheck.interval_ms = draw(st.one_of(st.just(0), st.integers(100, 60_000)))
        c.healthcheck.timeout_ms = draw(DURATION)
        c.healthcheck.retries = draw(st.integers(0, 10))
    c.stop_grace_period_ms = draw(DURATION)
    t = spec.task
    t.limits.nano_cpus = draw(st.one_of(st.just(0), st.integers(10_000_000, 8_000_000_000)))
    t.limits.memory_bytes = draw(st.one_of(st.just(0), st.integers(6 << 20, 1 << 30)))
    t.restart.condition = draw(st.sampled_from(pb.RestartPolicy.Condition.values()))
    t.restart.delay_ms = draw(DURATION)
    t.placement.constraints.extend(
        draw(st.lists(st.sampled_from(["node.labels.zone==a", "node.role!=manager"]), max_size=2))
    )
    for net in draw(st.lists(st.sampled_from(networks), max_size=1)) if networks else []:
        t.networks.add(target=net)
    u = spec.update
    u.parallelism = draw(st.integers(0, 4))
    u.delay_ms = draw(DURATION)
    u.max_failure_ratio = draw(st.floats(0, 1, width=32))
    u.failure_action = draw(st.sampled_from(pb.UpdateConfig.FailureAction.values()))
    u.order = draw(st.sampled_from(pb.UpdateConfig.Order.values()))
    for published in draw(st.lists(st.integers(1, 65535), max_size=2, unique=True)):
        spec.ports.add(target_port=80, published_port=published)
    return spec


Mutator = Callable[[st.DrawFn, pb.ServiceSpec], None]


def _set(path: str, values: st.SearchStrategy[object]) -> Mutator:
    """Sets the field at dotted `path` of the spec to a drawn value."""
    *parents, leaf = path.split(".")

    def mutate(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
        msg = spec
        for p in parents:
            msg = getattr(msg, p)
        setattr(msg, leaf, draw(values))

    return mutate


def _append(path: str, values: st.SearchStrategy[object]) -> Mutator:
    *parents, leaf = path.split(".")

    def mutate(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
        msg = spec
        for p in parents:
            msg = getattr(msg, p)
        getattr(msg, leaf).append(draw(values))

    return mutate


def _many(path: str, item: str, n: int) -> Mutator:
    def mutate(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
        msg = spec
        for p in path.split("."):
            msg = getattr(msg, p)
        msg.extend(item.format(i) for i in range(n))

    return mutate


def _label(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.annotations.labels[draw(WILD_TEXT)] = draw(WILD_TEXT)


def _mount(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.task.container.mounts.add(
        type=draw(st.one_of(st.sampled_from([0, 1, 2, -1]), INT32)),
        source=draw(st.one_of(st.sampled_from(["/", "/proc/1", "/var/lib/shoal/x", "v"]), TEXT)),
        target=draw(st.one_of(st.sampled_from(["/data", "/mnt/", "rel"]), WILD_TEXT)),
    )


def _port(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.ports.add(protocol=draw(INT32), target_port=draw(UINT32), published_port=draw(UINT32))


def _no_mode(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.ClearField("replicated")
    spec.ClearField("global")


def _big(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.task.container.env.extend(f"K{i}=" + "v" * 1000 for i in range(300))


def _labels_many(draw: st.DrawFn, spec: pb.ServiceSpec) -> None:
    spec.annotations.labels.update({f"k{i}": "v" for i in range(300)})


C = "task.container"
MUTATORS: list[Mutator] = [
    _set("annotations.name", WILD_TEXT),
    _set(f"{C}.image", WILD_TEXT),
    _append(f"{C}.env", WILD_TEXT),
    _append(f"{C}.args", WILD_TEXT),
    _append(f"{C}.command", WILD_TEXT),
    _append(f"{C}.cap_add", st.one_of(st.just("CAP_SYS_ADMIN"), WILD_TEXT)),
    _append(f"{C}.cap_drop", st.one_of(st.just("ALL"), WILD_TEXT)),
    _set(f"{C}.seccomp", st.one_of(st.just("unconfined"), WILD_TEXT)),
    _set(f"{C}.pids_limit", WILD_INT64),
    _set(f"{C}.user", WILD_TEXT),
    _set(f"{C}.dir", WILD_TEXT),
    _set(f"{C}.stop_grace_period_ms", WILD_INT64),
    _set(f"{C}.healthcheck.interval_ms", WILD_INT64),
    _set(f"{C}.healthcheck.timeout_ms", WILD_INT64),
    _set(f"{C}.healthcheck.retries", INT32),
    _append(f"{C}.healthcheck.test", WILD_TEXT),
    _set("task.limits.nano_cpus", WILD_INT64),
    _set("task.limits.memory_bytes", WILD_INT64),
    _set("task.reservations.nano_cpus", WILD_INT64),
    _set("task.reservations.memory_bytes", WILD_INT64),
    _set("task.restart.condition", INT32),
    _set("task.restart.delay_ms", WILD_INT64),
    _set("task.restart.window_ms", WILD_INT64),
    _set("task.restart.max_attempts", UINT64),
    _append("task.placement.constraints", WILD_TEXT),
    _set("task.placement.max_replicas_per_node", UINT64),
    _set("update.parallelism", UINT64),
    _set("update.delay_ms", WILD_INT64),
    _set("update.monitor_ms", WILD_INT64),
    _set("update.max_failure_ratio", st.floats(width=32)),
    _set("update.failure_action", INT32),
    _set("update.order", INT32),
    _set("replicated.replicas", UINT64),
    _label,
    _mount,
    _port,
    _no_mode,
    _big,
    _labels_many,
    _many(f"{C}.env", "K{}=v", 1001),
    _many(f"{C}.args", "a{}", 1001),
    _many("task.placement.constraints", "node.labels.k{}==v", 65),
]


@st.composite
def service_specs(draw: st.DrawFn, networks: tuple[str, ...] = ()) -> pb.ServiceSpec:
    spec = draw(valid_service(networks))
    for mutate in draw(st.lists(st.sampled_from(MUTATORS), max_size=3)):
        mutate(draw, spec)
    if draw(st.booleans()) and spec.task.networks:
        spec.task.networks[0].target = draw(WILD_TEXT)
    spec.task.container.image = safe_image(spec.task.container.image)
    return spec


def mutate_bytes(data: bytes, draw: st.DrawFn) -> bytes:
    """Flips, deletes or inserts a few bytes of a serialized message."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and buf:
            del buf[at]
        else:
            buf.insert(at, draw(st.integers(0, 255)))
    return bytes(buf)


SUBNETS = st.one_of(
    st.sampled_from(
        [
            "",
            "0.0.0.0/0",
            "127.0.0.0/8",
            "224.0.0.0/24",
            "169.254.1.0/24",
            "255.255.255.0/24",
            "10.1.0.0/16",
            "10.1.0.1/24",
            "10.2.0.0/30",
            "fd00::/64",
            "10.3.0.0/33",
        ]
    ),
    st.builds(lambda ip, n: f"{ip}/{n}", st.ip_addresses(v=4), st.integers(0, 32)),
    TEXT,
)


@st.composite
def network_specs(draw: st.DrawFn) -> pb.NetworkSpec:
    spec = pb.NetworkSpec(
        annotations=pb.Annotations(name=draw(st.one_of(NAMES, WILD_TEXT))),
        driver=draw(st.one_of(st.sampled_from(["", "overlay", "bridge"]), WILD_TEXT)),
        subnet=draw(SUBNETS),
    )
    if draw(st.booleans()):
        spec.annotations.labels[draw(st.one_of(LABEL_KEYS, WILD_TEXT))] = draw(WILD_TEXT)
    return spec


@st.composite
def node_specs(draw: st.DrawFn, current: pb.NodeSpec) -> pb.NodeSpec:
    spec = pb.NodeSpec()
    spec.CopyFrom(current)
    spec.availability = draw(st.one_of(st.sampled_from(pb.NodeAvailability.values()), INT32))
    if draw(st.booleans()):
        spec.desired_role = draw(st.one_of(st.sampled_from(pb.NodeRole.values()), INT32))
    if draw(st.booleans()):
        spec.labels[draw(st.one_of(LABEL_KEYS, WILD_TEXT))] = draw(st.one_of(PRINTABLE, NASTY))
    return spec


@st.composite
def cluster_specs(draw: st.DrawFn, current: pb.ClusterSpec) -> pb.ClusterSpec:
    spec = pb.ClusterSpec()
    spec.CopyFrom(current)
    d, o, ca = spec.dispatcher, spec.orchestration, spec.ca
    fields: list[tuple[object, str, st.SearchStrategy[int]]] = [
        (d, "heartbeat_period_ms", st.one_of(st.integers(100, 60_000), WILD_INT64)),
        (d, "heartbeat_misses", st.one_of(st.integers(1, 10), UINT32)),
        (o, "task_history_limit", st.one_of(st.integers(0, 10), UINT32)),
        (ca, "node_cert_expiry_ms", st.one_of(st.integers(10_000, 10**11), WILD_INT64)),
    ]
    for msg, name, values in draw(st.lists(st.sampled_from(fields), max_size=2)):
        setattr(msg, name, draw(values))
    if draw(st.booleans()):
        spec.annotations.labels[draw(st.one_of(LABEL_KEYS, WILD_TEXT))] = draw(WILD_TEXT)
    if draw(st.integers(0, 9)) == 0:
        spec.annotations.name = draw(WILD_TEXT)
    return spec


# ---- what an accepted object must look like, stated apart from the validator


def _clean(text: str) -> bool:
    return not any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in text)


def _duration_ok(ms: int) -> bool:
    return 0 <= ms <= 365 * 24 * 3600 * 1000


def assert_sane_service(spec: pb.ServiceSpec) -> None:
    """An accepted service spec: bounded, enums known, no negative or absurd durations,
    no control characters where they would reach a terminal, nothing the kernel refuses."""
    c, t, u = spec.task.container, spec.task, spec.update
    assert spec.ByteSize() <= 256 * 1024
    assert len(c.env) <= 1000 and len(c.args) + len(c.command) <= 1000
    assert len(c.mounts) <= 100 and len(spec.annotations.labels) <= 256
    for labels in (spec.annotations.labels, c.labels):
        assert all(_clean(k) and _clean(v) for k, v in labels.items()), labels
    for env in c.env:
        key, sep, value = env.partition("=")
        assert sep and key and _clean(key) and " " not in key and "\x00" not in value, env
    assert all("\x00" not in a for a in (*c.command, *c.args))
    assert all(m.type in pb.Mount.Type.values() and _clean(m.target) for m in c.mounts)
    assert all(m.source != "/" for m in c.mounts if m.type == pb.Mount.BIND)
    hc = c.healthcheck
    assert hc.interval_ms == 0 or 100 <= hc.interval_ms, hc
    assert _duration_ok(hc.interval_ms) and _duration_ok(hc.timeout_ms) and hc.retries >= 0
    assert _duration_ok(c.stop_grace_period_ms)
    assert t.limits.nano_cpus == 0 or t.limits.nano_cpus >= 10_000_000
    assert -1 <= c.pids_limit <= 4 * 1024 * 1024  # what the kernel's pids.max takes
    assert t.restart.condition in pb.RestartPolicy.Condition.values()
    assert _duration_ok(t.restart.delay_ms) and _duration_ok(t.restart.window_ms)
    assert all(_clean(x) for x in t.placement.constraints)
    assert u.failure_action in pb.UpdateConfig.FailureAction.values()
    assert u.order in pb.UpdateConfig.Order.values()
    assert _duration_ok(u.delay_ms) and _duration_ok(u.monitor_ms)
    assert all(p.protocol in pb.PortConfig.Protocol.values() for p in spec.ports)


def assert_sane_node(node: pb.Node) -> None:
    assert node.spec.availability in pb.NodeAvailability.values()
    assert node.spec.desired_role in pb.NodeRole.values()
    assert all(_clean(k) and _clean(v) for k, v in node.spec.labels.items())


def assert_sane_cluster(spec: pb.ClusterSpec) -> None:
    assert 100 <= spec.dispatcher.heartbeat_period_ms <= 3600 * 1000
    assert 1 <= spec.dispatcher.heartbeat_misses <= 100
    # A certificate must be issuable: now + expiry within X.509's (and datetime's) range.
    assert 10_000 <= spec.ca.node_cert_expiry_ms <= 10 * 365 * 24 * 3600 * 1000
    assert all(_clean(k) and _clean(v) for k, v in spec.annotations.labels.items())
