"""Flags to specs: the one place where command-line flags become API specs.

`service create` and `service update` share the spec flags (`SpecFlags`); update
also takes the `--*-rm` flags (`RemoveFlags`). Node, network and cluster specs
are built here too, so every command module only wires flags to these.
Bad values raise ValueError with a sentence the user can act on (exit 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal import defaults
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import filerefs, parse
from shoal.swarmctl.errors import CLIError

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class SpecFlags:
    """The flags `service create` and `service update` share; None/() = not given."""

    env: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    constraint: tuple[str, ...] = ()
    network: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    mount: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    cpu_reservation: str | None = None
    memory_reservation: str | None = None
    restart_condition: str | None = None
    restart_delay: str | None = None
    restart_max_attempts: int | None = None
    restart_window: str | None = None
    update_parallelism: int | None = None
    update_delay: str | None = None
    update_failure_action: str | None = None
    update_order: str | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_retries: int | None = None
    stop_grace_period: str | None = None
    max_replicas_per_node: int | None = None
    rebalance: bool | None = None
    endpoint_mode: str | None = None
    endpoint_drain: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    pids_limit: int | None = None
    secret: tuple[str, ...] = ()
    config: tuple[str, ...] = ()

    @classmethod
    def take(cls, flags: dict[str, Any]) -> SpecFlags:
        return cls(**{f.name: flags.pop(f.name) for f in dataclasses.fields(cls)})

    def restart_given(self) -> bool:
        return any(
            v is not None
            for v in (
                self.restart_condition,
                self.restart_delay,
                self.restart_max_attempts,
                self.restart_window,
            )
        )

    def update_given(self) -> bool:
        return any(
            v is not None
            for v in (
                self.update_parallelism,
                self.update_delay,
                self.update_failure_action,
                self.update_order,
            )
        )

    def any_given(self) -> bool:
        return any(getattr(self, f.name) not in (None, ()) for f in dataclasses.fields(self))


_SPEC_OPTIONS = [
    click.option("--env", "-e", multiple=True, metavar="K=V", help="Environment variable."),
    click.option("--label", "-l", multiple=True, metavar="K=V", help="Service label."),
    click.option(
        "--constraint", multiple=True, metavar="EXPR", help="Placement, e.g. node.labels.K==V."
    ),
    click.option("--network", multiple=True, metavar="NET", help="Overlay network to attach."),
    click.option(
        "--publish",
        "-p",
        multiple=True,
        metavar="PUB:TARGET[/PROTO]",
        help="Port; or published=P,target=T[,protocol=tcp|udp][,mode=ingress|host].",
    ),
    click.option(
        "--endpoint-mode",
        type=click.Choice(["vip", "dnsrr"]),
        help="The name resolves to a virtual IP (vip) or to the task IPs (dnsrr).",
    ),
    click.option(
        "--endpoint-drain",
        metavar="DURATION",
        help="Time a stopping task is out of DNS and load balancers before SIGTERM (2s).",
    ),
    click.option(
        "--mount",
        multiple=True,
        metavar="SPEC",
        help="type=bind|volume,source=S,target=T[,readonly]",
    ),
    click.option("--user", "-u", metavar="UID[:GID]", help="User the command runs as."),
    click.option("--workdir", "-w", metavar="DIR", help="Working directory of the command."),
    click.option("--cpu-limit", metavar="CPUS", help="e.g. 1.5; 0 for no limit."),
    click.option("--memory-limit", metavar="SIZE", help="Bytes or e.g. 512M; 0 for no limit."),
    click.option("--cpu-reservation", metavar="CPUS", help="CPUs the scheduler sets aside."),
    click.option("--memory-reservation", metavar="SIZE", help="Memory the scheduler sets aside."),
    click.option("--restart-condition", type=click.Choice(list(parse.RESTART_CONDITION))),
    click.option("--restart-delay", metavar="DURATION", help="e.g. 5s"),
    click.option("--restart-max-attempts", type=click.IntRange(0), help="0 for unlimited."),
    click.option("--restart-window", metavar="DURATION", help="Window the attempts count in."),
    click.option("--update-parallelism", type=click.IntRange(0), help="Tasks updated at once."),
    click.option("--update-delay", metavar="DURATION", help="Pause between update batches."),
    click.option("--update-failure-action", type=click.Choice(list(parse.FAILURE_ACTION))),
    click.option("--update-order", type=click.Choice(list(parse.UPDATE_ORDER))),
    click.option("--health-cmd", metavar="CMD", help="Shell command that checks health."),
    click.option("--health-interval", metavar="DURATION", help="Time between checks (5s)."),
    click.option(
        "--health-retries",
        type=click.IntRange(1),
        help="Failed checks in a row that make a task unhealthy (3).",
    ),
    click.option("--stop-grace-period", metavar="DURATION", help="SIGTERM to SIGKILL time."),
    click.option("--max-replicas-per-node", type=click.IntRange(0), help="0 for unlimited."),
    click.option(
        "--rebalance/--no-rebalance",
        default=None,
        help="Move tasks onto nodes that join or come back, to spread evenly again.",
    ),
    click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability."),
    click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (or ALL)."),
    click.option(
        "--security-opt",
        multiple=True,
        metavar="OPT",
        help="seccomp=unconfined turns the default seccomp profile off (seccomp=default: on).",
    ),
    click.option(
        "--pids-limit", type=click.IntRange(-1), help="Processes per task (4096; -1: none)."
    ),
    click.option(
        "--secret",
        multiple=True,
        metavar="NAME[@N][,target=PATH][,uid=U,gid=G,mode=0400]",
        help="Give the tasks a secret (NAME@N pins version N).",
    ),
    click.option("--config", multiple=True, metavar="NAME,target=PATH", help="Give a config."),
]


def spec_options(fn: F) -> F:
    for option in reversed(_SPEC_OPTIONS):
        fn = option(fn)
    return fn


def _upsert(items: Any, new: Any, key: Callable[[Any], object]) -> None:
    """Replaces the items with `new`'s key by `new` (in place), or appends it."""
    if all(key(x) != key(new) for x in items):
        items.append(new)
        return
    merged = [new if key(x) == key(new) else x for x in items]
    del items[:]
    items.extend(merged)


def _keep(items: Any, keep: Callable[[Any], bool]) -> None:
    kept = [x for x in items if keep(x)]
    del items[:]
    items.extend(kept)


def apply_spec_flags(
    spec: pb.ServiceSpec, f: SpecFlags, network_id: Callable[[str], str] = lambda ref: ref
) -> None:
    """Changes only what the given flags name; list flags add (or replace the same key)."""
    task, c = spec.task, spec.task.container
    for item in f.env:
        parse.key_value(item, "env")
        _upsert(c.env, item, lambda e: e.partition("=")[0])
    for item in f.label:
        key, value = parse.key_value(item, "label")
        spec.annotations.labels[key] = value
    for expr in f.constraint:
        if expr not in task.placement.constraints:
            task.placement.constraints.append(expr)
    for ref in f.network:
        target = network_id(ref)
        if all(a.target != target for a in task.networks):
            task.networks.add(target=target)
    for text in f.publish:
        _upsert(spec.ports, parse.port(text), parse.port_key)
    if f.endpoint_mode is not None:
        spec.endpoint_mode = pb.ENDPOINT_DNSRR if f.endpoint_mode == "dnsrr" else pb.ENDPOINT_VIP
    if f.endpoint_drain is not None:
        c.endpoint_drain_ms = parse.duration_ms(f.endpoint_drain)
    for text in f.mount:
        _upsert(c.mounts, parse.mount(text), lambda m: m.target)
    if f.user is not None:
        c.user = parse.user(f.user)
    if f.workdir is not None:
        c.dir = f.workdir
    if f.cpu_limit is not None:
        task.limits.nano_cpus = parse.nano_cpus(f.cpu_limit)
    if f.memory_limit is not None:
        task.limits.memory_bytes = parse.memory_bytes(f.memory_limit)
    if f.cpu_reservation is not None:
        task.reservations.nano_cpus = parse.nano_cpus(f.cpu_reservation)
    if f.memory_reservation is not None:
        task.reservations.memory_bytes = parse.memory_bytes(f.memory_reservation)
    if f.health_cmd is not None:
        c.ClearField("healthcheck")
        if f.health_cmd:  # an empty command removes the check
            c.healthcheck.test.extend(["CMD-SHELL", f.health_cmd])
    if f.health_interval is not None:
        c.healthcheck.interval_ms = parse.duration_ms(f.health_interval)
    if f.health_retries is not None:
        c.healthcheck.retries = f.health_retries
    if f.stop_grace_period is not None:
        c.stop_grace_period_ms = parse.duration_ms(f.stop_grace_period)
    if f.max_replicas_per_node is not None:
        task.placement.max_replicas_per_node = f.max_replicas_per_node
    if f.rebalance is not None:
        spec.rebalance = f.rebalance
    for text in f.secret:
        _upsert(c.secrets, filerefs.file_ref(text, "secret"), lambda r: r.name)
    for text in f.config:
        _upsert(c.configs, filerefs.file_ref(text, "config"), lambda r: r.name)
    _apply_confinement(c, f)
    _apply_restart(task, f)
    _apply_update(spec, f)


def _apply_confinement(c: pb.ContainerSpec, f: SpecFlags) -> None:
    """Looser than the defaults only by name: unknown capabilities and options fail."""
    for name in f.cap_add:
        cap = parse.capability(name)
        if cap in c.cap_drop:
            c.cap_drop.remove(cap)
        if cap not in c.cap_add:
            c.cap_add.append(cap)
    for name in f.cap_drop:
        cap = "ALL" if name.upper() == "ALL" else parse.capability(name)
        if cap in c.cap_add:
            c.cap_add.remove(cap)
        if cap not in c.cap_drop:
            c.cap_drop.append(cap)
    for opt in f.security_opt:
        c.seccomp = parse.security_opt(opt)
    if f.pids_limit is not None:
        c.pids_limit = f.pids_limit


def _apply_restart(task: pb.TaskSpec, f: SpecFlags) -> None:
    if not f.restart_given():
        return
    # One flag must not zero the group's other fields: start from the defaults.
    if not task.HasField("restart"):
        task.restart.CopyFrom(defaults.restart_policy())
    r = task.restart
    if f.restart_condition is not None:
        r.condition = parse.restart_condition(f.restart_condition)
    if f.restart_delay is not None:
        r.delay_ms = parse.duration_ms(f.restart_delay)
    if f.restart_max_attempts is not None:
        r.max_attempts = f.restart_max_attempts
    if f.restart_window is not None:
        r.window_ms = parse.duration_ms(f.restart_window)


def _apply_update(spec: pb.ServiceSpec, f: SpecFlags) -> None:
    if not f.update_given():
        return
    if not spec.HasField("update"):
        spec.update.CopyFrom(defaults.update_config())
    u = spec.update
    if f.update_parallelism is not None:
        u.parallelism = f.update_parallelism
    if f.update_delay is not None:
        u.delay_ms = parse.duration_ms(f.update_delay)
    if f.update_failure_action is not None:
        u.failure_action = parse.failure_action(f.update_failure_action)
    if f.update_order is not None:
        u.order = parse.update_order(f.update_order)


@dataclasses.dataclass(frozen=True)
class RemoveFlags:
    """`service update`'s `--*-rm` flags."""

    env_rm: tuple[str, ...] = ()
    label_rm: tuple[str, ...] = ()
    constraint_rm: tuple[str, ...] = ()
    network_rm: tuple[str, ...] = ()
    publish_rm: tuple[str, ...] = ()
    mount_rm: tuple[str, ...] = ()
    secret_rm: tuple[str, ...] = ()
    config_rm: tuple[str, ...] = ()

    @classmethod
    def take(cls, flags: dict[str, Any]) -> RemoveFlags:
        return cls(**{f.name: flags.pop(f.name) for f in dataclasses.fields(cls)})

    def any_given(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))


_REMOVE_OPTIONS = [
    click.option("--env-rm", multiple=True, metavar="K", help="Remove an environment variable."),
    click.option("--label-rm", multiple=True, metavar="K", help="Remove a service label."),
    click.option("--constraint-rm", multiple=True, metavar="EXPR", help="Remove a constraint."),
    click.option("--network-rm", multiple=True, metavar="NET", help="Detach a network."),
    click.option(
        "--publish-rm", multiple=True, metavar="PUB[/PROTO]", help="Unpublish a published port."
    ),
    click.option("--mount-rm", multiple=True, metavar="TARGET", help="Remove a mount."),
    click.option("--secret-rm", multiple=True, metavar="NAME", help="Remove a secret."),
    click.option("--config-rm", multiple=True, metavar="NAME", help="Remove a config."),
]


def remove_options(fn: F) -> F:
    for option in reversed(_REMOVE_OPTIONS):
        fn = option(fn)
    return fn


def _published(text: str) -> tuple[int, pb.PortConfig.Protocol.ValueType]:
    number, _, proto = text.partition("/")
    if not number.isdigit() or proto.lower() not in ("", "tcp", "udp"):
        raise ValueError(f"invalid port {text!r}: expected PUBLISHED[/tcp|udp]")
    return int(number), pb.PortConfig.UDP if proto.lower() == "udp" else pb.PortConfig.TCP


def remove_spec_items(
    spec: pb.ServiceSpec, r: RemoveFlags, network_id: Callable[[str], str] = lambda ref: ref
) -> None:
    """Removing what is not there is fine: the result is what was asked for."""
    task, c = spec.task, spec.task.container
    if r.env_rm:
        _keep(c.env, lambda e: e.partition("=")[0] not in r.env_rm)
    for key in r.label_rm:
        spec.annotations.labels.pop(key, None)
    if r.constraint_rm:
        _keep(task.placement.constraints, lambda x: x not in r.constraint_rm)
    if r.network_rm:
        gone = {network_id(ref) for ref in r.network_rm}
        _keep(task.networks, lambda a: a.target not in gone)
    if r.publish_rm:
        ports = {_published(text) for text in r.publish_rm}
        _keep(spec.ports, lambda p: (p.published_port, p.protocol) not in ports)
    if r.mount_rm:
        _keep(c.mounts, lambda m: m.target not in r.mount_rm)
    if r.secret_rm:
        _keep(c.secrets, lambda ref: ref.name not in r.secret_rm)
    if r.config_rm:
        _keep(c.configs, lambda ref: ref.name not in r.config_rm)


def check_replicas(n: int) -> int:
    if n < 0:
        raise ValueError(f"replicas must be 0 or more, got {n}")
    if n > defaults.MAX_REPLICAS:
        raise ValueError(f"replicas must be between 0 and {defaults.MAX_REPLICAS}, got {n}")
    return n


# ---------------------------------------------------------------- whole specs


def new_service_spec(
    name: str,
    image: str,
    replicas: int | None,
    mode: str,
    command: tuple[str, ...],
    flags: SpecFlags,
) -> pb.ServiceSpec:
    """`service create`'s spec (the caller refused `--replicas` with `--mode global`)."""
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.task.container.image = image
    if command:
        spec.task.container.command.append(command[0])
        spec.task.container.args.extend(command[1:])
    if mode == "global":
        getattr(spec, "global").SetInParent()  # `global` is a Python keyword
    else:
        spec.replicated.replicas = check_replicas(1 if replicas is None else replicas)
    apply_spec_flags(spec, flags)
    return spec


def updated_service_spec(
    current: pb.ServiceSpec,
    image: str | None,
    replicas: int | None,
    flags: SpecFlags,
    rm_flags: RemoveFlags,
    network_id: Callable[[str], str],
) -> pb.ServiceSpec:
    """`service update`: a copy of the stored spec with what the flags name changed."""
    spec = pb.ServiceSpec()
    spec.CopyFrom(current)
    if image is not None:
        spec.task.container.image = image
    if replicas is not None:
        if spec.WhichOneof("mode") != "replicated":
            raise CLIError("--replicas can only be used with replicated services")
        spec.replicated.replicas = replicas
    remove_spec_items(spec, rm_flags, network_id)
    apply_spec_flags(spec, flags, network_id)
    return spec


def scaled_service_spec(current: pb.ServiceSpec, name: str, count: int) -> pb.ServiceSpec:
    if current.WhichOneof("mode") != "replicated":
        raise CLIError(f"{name}: scale can only be used with replicated services")
    spec = pb.ServiceSpec()
    spec.CopyFrom(current)
    spec.replicated.replicas = count
    return spec


def node_spec(
    current: pb.NodeSpec,
    availability: str | None,
    label_add: list[tuple[str, str]],
    label_rm: tuple[str, ...],
) -> pb.NodeSpec:
    """`node update`: the labels come parsed, so bad ones fail before any request."""
    spec = pb.NodeSpec()
    spec.CopyFrom(current)
    if availability is not None:
        spec.availability = parse.availability(availability)
    for key in label_rm:
        spec.labels.pop(key, None)
    for key, value in label_add:
        spec.labels[key] = value
    return spec


def network_spec(
    name: str, driver: str, subnet: str, labels: tuple[str, ...], internal: bool = False
) -> pb.NetworkSpec:
    spec = pb.NetworkSpec(
        annotations=pb.Annotations(name=name), driver=driver, subnet=subnet, internal=internal
    )
    for item in labels:
        key, value = parse.key_value(item, "label")
        spec.annotations.labels[key] = value
    return spec


def cluster_spec(
    current: pb.ClusterSpec,
    heartbeat_period: str | None,
    heartbeat_misses: int | None,
    task_history_limit: int | None,
    cert_expiry: str | None,
    rebalance: bool | None,
    vip_range: str | None = None,
) -> pb.ClusterSpec:
    """`cluster update`: only the flags given change."""
    spec = pb.ClusterSpec()
    spec.CopyFrom(current)
    if heartbeat_period is not None:
        spec.dispatcher.heartbeat_period_ms = parse.duration_ms(heartbeat_period)
    if heartbeat_misses is not None:
        spec.dispatcher.heartbeat_misses = heartbeat_misses
    if task_history_limit is not None:
        spec.orchestration.task_history_limit = task_history_limit
    if cert_expiry is not None:
        spec.ca.node_cert_expiry_ms = parse.duration_ms(cert_expiry)
    if rebalance is not None:
        spec.orchestration.rebalance = rebalance
    if vip_range is not None:
        spec.vip_range = vip_range
    return spec
