"""Validation at the door: a request is checked whole before anything is written.

Each check raises InvalidSpec with one sentence a user can act on. Everything the
control API takes is bounded here: an open proto enum, a negative duration, an
escape sequence in a label or a megabyte of env would otherwise reach the store,
every agent and every `ls`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from google.protobuf.message import Message

from shoal import defaults
from shoal.manager import confinement, constraints
from shoal.proto import objects_pb2 as pb


class InvalidSpec(ValueError):
    pass


_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
# Control characters (C0, DEL, C1): terminal escapes in `ls`, NULs that exec refuses.
# Patterns are used with fullmatch: `$` would also match before a final newline.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENV_KEY = re.compile(r"^[^=\s\x00-\x1f\x7f-\x9f]+$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")

MIN_MEMORY = 6 * 1024 * 1024  # runc refuses less
MAX_MEMORY = 1 << 50  # 1 PiB: beyond any host, and far from int64 overflow in sums
# CFS: quota >= 1ms per 100ms period, so a limit below 0.01 CPU is refused by the kernel.
MIN_CPU_LIMIT = 10_000_000
MAX_CPUS = 4096
DRIVERS = ("overlay",)

# Sizes and counts. A spec travels in every task record and to every agent.
MAX_SPEC_BYTES = 256 * 1024
MAX_ENV = 1000
MAX_ARGS = 1000
MAX_LABELS = 256
MAX_LABEL_KEY = 255
MAX_LABEL_VALUE = 4096
MAX_MOUNTS = 100
MAX_PORTS = 1000
MAX_NETWORKS = 32
MAX_CONSTRAINTS = 64
MAX_CONSTRAINT_LEN = 1024
MAX_PATH = 4096
MAX_USER = 256
# Durations: a year is longer than anything meaningful and keeps `now + d` in int64.
MAX_DURATION_MS = 365 * 24 * 3600 * 1000
MIN_HEALTH_INTERVAL_MS = 100  # a check is an exec in the container: faster is a busy loop
MAX_HEALTH_RETRIES = 10_000

# Subnets an overlay may not use: "this network", loopback, link-local, multicast,
# reserved (with the limited broadcast address).
RESERVED_NETS = tuple(
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
)

MIN_CERT_EXPIRY_MS = 10_000
MAX_CERT_EXPIRY_MS = 10 * 365 * 24 * 3600 * 1000
MIN_HEARTBEAT_MS = 100
MAX_HEARTBEAT_MS = 3600 * 1000
MAX_HEARTBEAT_MISSES = 100
MAX_TASK_HISTORY = 1000


def check_name(what: str, name: str) -> None:
    if not name:
        raise InvalidSpec(f"{what} name is required")
    if not _NAME.fullmatch(name):
        raise InvalidSpec(
            f"invalid {what} name {name!r}: use 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def check_hostname(hostname: str) -> None:
    """A node's name as it shows in `node ls` and placement constraints."""
    if not _HOSTNAME.fullmatch(hostname):
        raise InvalidSpec(
            f"invalid hostname {hostname[:80]!r}: use 1-253 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def check_image(image: str) -> None:
    if not image:
        raise InvalidSpec("image is required")
    first, slash, _ = image.partition("@")[0].partition("/")
    # Docker's rule, as the puller applies it: a first component without '.' or ':' (and
    # not `localhost`) is part of the repository, so it must be lower-case like the rest.
    registry = slash and ("." in first or ":" in first or first == "localhost")
    path_ok = registry or not slash or re.fullmatch(_PATH_PART, first)
    if len(image) > 255 or not _IMAGE.fullmatch(image) or not path_ok:
        raise InvalidSpec(
            f"invalid image reference {image[:300]!r}: expected "
            "[registry/]name[:tag][@sha256:digest] with a lower-case name"
        )


def check_size(what: str, msg: Message, limit: int = MAX_SPEC_BYTES) -> None:
    size = msg.ByteSize()
    if size > limit:
        raise InvalidSpec(f"the {what} is too large: {size} bytes, at most {limit // 1024} KiB")


def check_count(what: str, items: Iterable[object], limit: int) -> None:
    n = len(list(items))
    if n > limit:
        raise InvalidSpec(f"too many {what}: {n}, at most {limit}")


def check_text(what: str, text: str, limit: int) -> None:
    """A free-form string: bounded, and without control characters."""
    if len(text) > limit:
        raise InvalidSpec(f"{what} is too long: {len(text)} characters, at most {limit}")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise InvalidSpec(f"{what} {text[:80]!r} contains a control character ({bad[0]!r})")


def check_enum(what: str, value: int, enum: Iterable[int]) -> None:
    """Proto3 enums are open: a client may send any int32."""
    if value not in set(enum):
        raise InvalidSpec(f"unknown {what} {value}")


def check_duration(what: str, ms: int, *, minimum: int = 0) -> None:
    """0 (the default) or `minimum`..a year."""
    if ms < 0:
        raise InvalidSpec(f"{what} cannot be negative, got {ms}ms")
    if ms and not minimum <= ms <= MAX_DURATION_MS:
        raise InvalidSpec(
            f"{what} must be 0 (the default) or between {minimum}ms and 365 days, got {ms}ms"
        )


def check_labels(what: str, labels: Mapping[str, str]) -> None:
    check_count(f"{what} labels", labels, MAX_LABELS)
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
            raise InvalidSpec(
                f"invalid {what} label key {key[:80]!r}: use letters, digits, '_', '.', '/' "
                f"or '-' (at most {MAX_LABEL_KEY}), starting with a letter or digit"
            )
        check_text(f"{what} label {key}", value, MAX_LABEL_VALUE)


def check_service_spec(spec: pb.ServiceSpec) -> None:
    check_size("service spec", spec)
    check_name("service", spec.annotations.name)
    check_labels("service", spec.annotations.labels)
    mode = spec.WhichOneof("mode")
    if mode is None:
        raise InvalidSpec("service mode is required: replicated or global")
    if mode == "replicated" and spec.replicated.replicas > defaults.MAX_REPLICAS:
        raise InvalidSpec(
            f"replicas must be between 0 and {defaults.MAX_REPLICAS}, "
            f"got {spec.replicated.replicas}"
        )
    check_task_spec(spec.task)
    check_update(spec.update)
    if spec.HasField("rollback"):
        check_update(spec.rollback)
    check_ports(spec.ports)


def check_ports(ports: Iterable[pb.PortConfig]) -> None:
    ports = list(ports)
    check_count("published ports", ports, MAX_PORTS)
    seen: set[tuple[int, int]] = set()
    for port in ports:
        check_enum("port protocol", port.protocol, pb.PortConfig.Protocol.values())
        if not 1 <= port.target_port <= 65535:
            raise InvalidSpec(f"invalid target port {port.target_port}: must be 1-65535")
        if port.published_port > 65535:
            raise InvalidSpec(f"invalid published port {port.published_port}: must be 0-65535")
        if port.published_port:
            key = (port.published_port, port.protocol)
            if key in seen:
                raise InvalidSpec(f"port {port.published_port} is published twice")
            seen.add(key)


def check_task_spec(task: pb.TaskSpec) -> None:
    check_container(task.container)
    check_resources(task)
    r = task.restart
    check_enum("restart condition", r.condition, pb.RestartPolicy.Condition.values())
    check_duration("restart delay", r.delay_ms)
    check_duration("restart window", r.window_ms)
    check_count("placement constraints", task.placement.constraints, MAX_CONSTRAINTS)
    for expr in task.placement.constraints:
        check_text("constraint", expr, MAX_CONSTRAINT_LEN)
        try:
            constraints.parse(expr)
        except ValueError as err:
            raise InvalidSpec(str(err)) from None
    check_count("network attachments", task.networks, MAX_NETWORKS)


def check_container(c: pb.ContainerSpec) -> None:
    check_image(c.image)
    check_count("command and args entries", [*c.command, *c.args], MAX_ARGS)
    for arg in (*c.command, *c.args):
        if "\x00" in arg:
            raise InvalidSpec(f"command and args may not contain NUL characters: {arg[:80]!r}")
    check_count("env entries", c.env, MAX_ENV)
    for env in c.env:
        key, sep, value = env.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise InvalidSpec(
                f"invalid env {env[:80]!r}: expected KEY=VALUE, with no whitespace or "
                "control characters in KEY"
            )
        if "\x00" in value:
            raise InvalidSpec(f"env {key} may not contain NUL characters")
    if c.user and (len(c.user) > MAX_USER or not _USER.fullmatch(c.user)):
        raise InvalidSpec(f"invalid user {c.user[:80]!r}: expected USER[:GROUP] or UID[:GID]")
    if c.dir:
        check_text("working directory", c.dir, MAX_PATH)
        if not c.dir.startswith("/"):
            raise InvalidSpec(f"invalid working directory {c.dir!r}: must be an absolute path")
    check_labels("container", c.labels)
    check_mounts(c.mounts)
    try:
        confinement.check_container(c)
    except confinement.ConfinementError as err:
        raise InvalidSpec(str(err)) from None
    check_healthcheck(c.healthcheck)
    check_duration("stop grace period", c.stop_grace_period_ms)


def check_mounts(mounts: Iterable[pb.Mount]) -> None:
    mounts = list(mounts)
    check_count("mounts", mounts, MAX_MOUNTS)
    targets: set[str] = set()
    for m in mounts:
        check_enum("mount type", m.type, pb.Mount.Type.values())
        check_text("mount target", m.target, MAX_PATH)
        check_text("mount source", m.source, MAX_PATH)
        if not m.target.startswith("/"):
            raise InvalidSpec(f"invalid mount target {m.target!r}: must be an absolute path")
        if m.target.rstrip("/") in targets:
            raise InvalidSpec(f"mount target {m.target!r} is used twice")
        targets.add(m.target.rstrip("/"))
        if m.type == pb.Mount.BIND and not m.source.startswith("/"):
            raise InvalidSpec(f"invalid bind mount source {m.source!r}: must be an absolute path")
        if m.type == pb.Mount.VOLUME and not _VOLUME.fullmatch(m.source):
            raise InvalidSpec(f"invalid volume name {m.source!r}")


def check_healthcheck(hc: pb.HealthCheck) -> None:
    if hc.test:
        kind = hc.test[0]
        if kind not in ("CMD", "CMD-SHELL", "NONE"):
            raise InvalidSpec("health check test must start with CMD, CMD-SHELL or NONE")
        if kind != "NONE" and len(hc.test) < 2:
            raise InvalidSpec(f"health check {kind} needs a command")
        check_count("health check arguments", hc.test, MAX_ARGS)
        if any("\x00" in t for t in hc.test):
            raise InvalidSpec("the health check command may not contain NUL characters")
    check_duration("health check interval", hc.interval_ms, minimum=MIN_HEALTH_INTERVAL_MS)
    check_duration("health check timeout", hc.timeout_ms, minimum=1)
    check_duration("health check start period", hc.start_period_ms)
    if not 0 <= hc.retries <= MAX_HEALTH_RETRIES:
        raise InvalidSpec(
            f"health check retries must be between 0 and {MAX_HEALTH_RETRIES}, got {hc.retries}"
        )


def check_resources(task: pb.TaskSpec) -> None:
    for res, what in ((task.limits, "limit"), (task.reservations, "reservation")):
        if res.nano_cpus < 0 or res.memory_bytes < 0:
            raise InvalidSpec(f"cpu and memory {what}s cannot be negative")
        if res.nano_cpus > MAX_CPUS * 1_000_000_000:
            raise InvalidSpec(f"cpu {what} must be at most {MAX_CPUS} CPUs")
        if 0 < res.memory_bytes < MIN_MEMORY:
            raise InvalidSpec(f"memory {what} must be at least 6MiB, got {res.memory_bytes} bytes")
        if res.memory_bytes > MAX_MEMORY:
            raise InvalidSpec(f"memory {what} must be at most 1PiB, got {res.memory_bytes} bytes")
    if 0 < task.limits.nano_cpus < MIN_CPU_LIMIT:
        raise InvalidSpec(
            f"cpu limit must be at least 0.01 CPU (the kernel's minimum CFS quota), "
            f"got {task.limits.nano_cpus / 1e9:g}"
        )


def check_update(update: pb.UpdateConfig) -> None:
    check_duration("update delay", update.delay_ms)
    check_duration("update monitor", update.monitor_ms)
    if not 0 <= update.max_failure_ratio <= 1:
        raise InvalidSpec("update max failure ratio must be between 0 and 1")
    actions = pb.UpdateConfig.FailureAction.values()
    check_enum("update failure action", update.failure_action, actions)
    check_enum("update order", update.order, pb.UpdateConfig.Order.values())


def check_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        raise InvalidSpec(f"invalid subnet {text[:80]!r}: {err}") from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise InvalidSpec(f"invalid subnet {text!r}: only IPv4 subnets are supported")
    if subnet.prefixlen > 29:
        raise InvalidSpec(f"subnet {text} is too small: use /29 or larger")
    special = next((r for r in RESERVED_NETS if r.overlaps(subnet)), None)
    if special is not None:
        raise InvalidSpec(
            f"subnet {text} overlaps {special}, which is reserved "
            "(this-network, loopback, link-local, multicast or reserved addresses)"
        )
    return subnet


def check_network_spec(spec: pb.NetworkSpec) -> ipaddress.IPv4Network | None:
    """Checks a network spec; returns its requested subnet, if any."""
    check_size("network spec", spec)
    check_name("network", spec.annotations.name)
    check_labels("network", spec.annotations.labels)
    if spec.driver not in DRIVERS:
        raise InvalidSpec(
            f"unknown network driver {spec.driver[:80]!r}: supported: {', '.join(DRIVERS)}"
        )
    return check_subnet(spec.subnet) if spec.subnet else None


def check_node_spec(spec: pb.NodeSpec) -> None:
    check_size("node spec", spec)
    check_enum("availability", spec.availability, pb.NodeAvailability.values())
    check_enum("node role", spec.desired_role, pb.NodeRole.values())
    check_labels("node", spec.labels)


def check_cluster_spec(spec: pb.ClusterSpec) -> None:
    check_size("cluster spec", spec)
    check_labels("cluster", spec.annotations.labels)
    period = spec.dispatcher.heartbeat_period_ms
    if not MIN_HEARTBEAT_MS <= period <= MAX_HEARTBEAT_MS:
        raise InvalidSpec(
            f"heartbeat period must be between {MIN_HEARTBEAT_MS}ms and 1h, got {period}ms"
        )
    if not 1 <= spec.dispatcher.heartbeat_misses <= MAX_HEARTBEAT_MISSES:
        raise InvalidSpec(f"heartbeat misses must be between 1 and {MAX_HEARTBEAT_MISSES}")
    if spec.orchestration.task_history_limit > MAX_TASK_HISTORY:
        raise InvalidSpec(f"task history limit must be at most {MAX_TASK_HISTORY}")
    if not MIN_CERT_EXPIRY_MS <= spec.ca.node_cert_expiry_ms <= MAX_CERT_EXPIRY_MS:
        raise InvalidSpec("certificate expiry must be between 10s and 10 years")


def clean_description(desc: pb.NodeDescription, joined_as: str) -> pb.NodeDescription:
    """What an agent reports about itself at each session, made safe to list: a hostname
    that is not valid keeps the one checked at join; os/arch/runtime/oci_runtime lose control
    characters and are cut to 64 characters."""
    out = pb.NodeDescription()
    out.CopyFrom(desc)
    if not _HOSTNAME.fullmatch(out.hostname):
        out.hostname = joined_as
    for field in ("os", "arch", "runtime", "oci_runtime"):
        setattr(out, field, _CONTROL.sub("", getattr(out, field))[:64])
    return out
