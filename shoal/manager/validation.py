"""Validation at the door: a request is checked whole before anything is written.

Each check raises InvalidSpec with a sentence a user can act on.
"""

from __future__ import annotations

import ipaddress
import re

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
_ENV_KEY = re.compile(r"^[^=\s]+$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_MEMORY = 6 * 1024 * 1024  # runc refuses less
DRIVERS = ("overlay",)


def check_name(what: str, name: str) -> None:
    if not name:
        raise InvalidSpec(f"{what} name is required")
    if not _NAME.match(name):
        raise InvalidSpec(
            f"invalid {what} name {name!r}: use 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )


def check_image(image: str) -> None:
    if not image:
        raise InvalidSpec("image is required")
    if len(image) > 255 or not _IMAGE.match(image):
        raise InvalidSpec(
            f"invalid image reference {image!r}: expected [registry/]name[:tag][@sha256:digest] "
            "with a lower-case name"
        )


def check_labels(what: str, labels: dict[str, str]) -> None:
    for key in labels:
        if not _LABEL_KEY.match(key):
            raise InvalidSpec(f"invalid {what} label key {key!r}")


def check_service_spec(spec: pb.ServiceSpec) -> None:
    check_name("service", spec.annotations.name)
    check_labels("service", dict(spec.annotations.labels))
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
    seen: set[tuple[int, int]] = set()
    for port in spec.ports:
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
    c = task.container
    check_image(c.image)
    for env in c.env:
        key, sep, _ = env.partition("=")
        if not sep or not _ENV_KEY.match(key):
            raise InvalidSpec(f"invalid env {env!r}: expected KEY=VALUE")
    if c.user and not _USER.match(c.user):
        raise InvalidSpec(f"invalid user {c.user!r}: expected USER[:GROUP] or UID[:GID]")
    if c.dir and not c.dir.startswith("/"):
        raise InvalidSpec(f"invalid working directory {c.dir!r}: must be an absolute path")
    for m in c.mounts:
        if not m.target.startswith("/"):
            raise InvalidSpec(f"invalid mount target {m.target!r}: must be an absolute path")
        if m.type == pb.Mount.BIND and not m.source.startswith("/"):
            raise InvalidSpec(f"invalid bind mount source {m.source!r}: must be an absolute path")
        if m.type == pb.Mount.VOLUME and not _VOLUME.match(m.source):
            raise InvalidSpec(f"invalid volume name {m.source!r}")
    try:
        confinement.check_container(c)
    except confinement.ConfinementError as err:
        raise InvalidSpec(str(err)) from None
    if c.healthcheck.test and c.healthcheck.test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise InvalidSpec("health check test must start with CMD, CMD-SHELL or NONE")
    if c.healthcheck.start_period_ms < 0:
        raise InvalidSpec("health check start period cannot be negative")
    for res, what in ((task.limits, "limit"), (task.reservations, "reservation")):
        if res.nano_cpus < 0 or res.memory_bytes < 0:
            raise InvalidSpec(f"cpu and memory {what}s cannot be negative")
        if 0 < res.memory_bytes < MIN_MEMORY:
            raise InvalidSpec(f"memory {what} must be at least 6MiB, got {res.memory_bytes} bytes")
    if task.restart.delay_ms < 0 or task.restart.window_ms < 0:
        raise InvalidSpec("restart delay and window cannot be negative")
    for expr in task.placement.constraints:
        try:
            constraints.parse(expr)
        except ValueError as err:
            raise InvalidSpec(str(err)) from None


def check_update(update: pb.UpdateConfig) -> None:
    if update.delay_ms < 0 or update.monitor_ms < 0:
        raise InvalidSpec("update delay and monitor cannot be negative")
    if not 0 <= update.max_failure_ratio <= 1:
        raise InvalidSpec("update max failure ratio must be between 0 and 1")


def check_network_spec(spec: pb.NetworkSpec) -> ipaddress.IPv4Network | None:
    """Checks a network spec; returns its requested subnet, if any."""
    check_name("network", spec.annotations.name)
    check_labels("network", dict(spec.annotations.labels))
    if spec.driver not in DRIVERS:
        raise InvalidSpec(
            f"unknown network driver {spec.driver!r}: supported: {', '.join(DRIVERS)}"
        )
    if not spec.subnet:
        return None
    try:
        subnet = ipaddress.ip_network(spec.subnet, strict=True)
    except ValueError as err:
        raise InvalidSpec(f"invalid subnet {spec.subnet!r}: {err}") from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise InvalidSpec(f"invalid subnet {spec.subnet!r}: only IPv4 subnets are supported")
    if subnet.prefixlen > 29:
        raise InvalidSpec(f"subnet {spec.subnet} is too small: use /29 or larger")
    return subnet


def check_node_spec(spec: pb.NodeSpec) -> None:
    if spec.availability not in pb.NodeAvailability.values():
        raise InvalidSpec(f"unknown availability {spec.availability}")
    check_labels("node", dict(spec.labels))


MIN_CERT_EXPIRY_MS = 10_000
MIN_HEARTBEAT_MS = 100


def check_cluster_spec(spec: pb.ClusterSpec) -> None:
    if spec.dispatcher.heartbeat_period_ms < MIN_HEARTBEAT_MS:
        raise InvalidSpec(f"heartbeat period must be at least {MIN_HEARTBEAT_MS}ms")
    if spec.dispatcher.heartbeat_misses < 1:
        raise InvalidSpec("heartbeat misses must be at least 1")
    if spec.ca.node_cert_expiry_ms < MIN_CERT_EXPIRY_MS:
        raise InvalidSpec("certificate expiry must be at least 10s")
