"""Flags to service specs: the one place where command-line flags become a ServiceSpec.

The spec is built in its JSON form: the protobuf JSON mapping of ServiceSpec with
the .proto's field names (`published_port`) and enum value names (`"UDP"`), fields
at their default left out as the mapping does. That is what the manager's HTTP
socket takes (POST /services, shoal/manager/restservices.py) and what swarmctl's
service commands send, so they load neither protobuf nor gRPC; a gRPC caller
turns it into the message with `json_format.ParseDict`.

`service create` and `service update` share the spec flags (`SpecFlags`); update
also takes the `--*-rm` flags (`RemoveFlags`). Node, network and cluster specs
(commands that stay on gRPC) are built in objspecs.py.
Bad values raise ValueError with a sentence the user can act on (exit 1).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal import defaults
from shoal.swarmctl import filerefs, parse
from shoal.swarmctl.errors import CLIError

F = TypeVar("F", bound=Callable[..., Any])
# A message in the JSON form (see above).
Spec = dict[str, Any]


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


def _sub(obj: Spec, *keys: str) -> Spec:
    """The message at `obj.keys...`, made (empty) where it is not there yet."""
    for key in keys:
        obj = obj.setdefault(key, {})
    return obj


def _list(obj: Spec, key: str) -> list[Any]:
    items: list[Any] = obj.setdefault(key, [])
    return items


def _upsert(items: list[Any], new: Any, key: Callable[[Any], object]) -> None:
    """Replaces the items with `new`'s key by `new` (in place), or appends it."""
    if all(key(x) != key(new) for x in items):
        items.append(new)
        return
    items[:] = [new if key(x) == key(new) else x for x in items]


def _keep(obj: Spec, field: str, keep: Callable[[Any], bool]) -> None:
    if field in obj:
        obj[field] = [x for x in obj[field] if keep(x)]


def apply_spec_flags(
    spec: Spec, f: SpecFlags, network_id: Callable[[str], str] = lambda ref: ref
) -> None:
    """Changes only what the given flags name; list flags add (or replace the same key)."""
    task = _sub(spec, "task")
    c = _sub(task, "container")
    for item in f.env:
        parse.key_value(item, "env")
        _upsert(_list(c, "env"), item, lambda e: e.partition("=")[0])
    for item in f.label:
        key, value = parse.key_value(item, "label")
        _sub(spec, "annotations", "labels")[key] = value
    for expr in f.constraint:
        constraints = _list(_sub(task, "placement"), "constraints")
        if expr not in constraints:
            constraints.append(expr)
    for ref in f.network:
        target = network_id(ref)
        networks = _list(task, "networks")
        if all(a.get("target") != target for a in networks):
            networks.append({"target": target})
    for text in f.publish:
        _upsert(_list(spec, "ports"), parse.port(text), parse.port_key)
    if f.endpoint_mode is not None:
        spec["endpoint_mode"] = "ENDPOINT_" + f.endpoint_mode.upper()
    if f.endpoint_drain is not None:
        c["endpoint_drain_ms"] = parse.duration_ms(f.endpoint_drain)
    for text in f.mount:
        _upsert(_list(c, "mounts"), parse.mount(text), lambda m: m.get("target", ""))
    if f.user is not None:
        c["user"] = parse.user(f.user)
    if f.workdir is not None:
        c["dir"] = f.workdir
    _apply_resources(task, f)
    _apply_health(c, f)
    if f.stop_grace_period is not None:
        c["stop_grace_period_ms"] = parse.duration_ms(f.stop_grace_period)
    if f.max_replicas_per_node is not None:
        _sub(task, "placement")["max_replicas_per_node"] = f.max_replicas_per_node
    if f.rebalance is not None:
        spec["rebalance"] = f.rebalance
    for text in f.secret:
        _upsert(_list(c, "secrets"), filerefs.file_ref(text, "secret"), lambda r: r["name"])
    for text in f.config:
        _upsert(_list(c, "configs"), filerefs.file_ref(text, "config"), lambda r: r["name"])
    _apply_confinement(c, f)
    _apply_restart(task, f)
    _apply_update(spec, f)


def _apply_resources(task: Spec, f: SpecFlags) -> None:
    if f.cpu_limit is not None:
        _sub(task, "limits")["nano_cpus"] = parse.nano_cpus(f.cpu_limit)
    if f.memory_limit is not None:
        _sub(task, "limits")["memory_bytes"] = parse.memory_bytes(f.memory_limit)
    if f.cpu_reservation is not None:
        _sub(task, "reservations")["nano_cpus"] = parse.nano_cpus(f.cpu_reservation)
    if f.memory_reservation is not None:
        _sub(task, "reservations")["memory_bytes"] = parse.memory_bytes(f.memory_reservation)


def _apply_health(c: Spec, f: SpecFlags) -> None:
    if f.health_cmd is not None:
        c.pop("healthcheck", None)
        if f.health_cmd:  # an empty command removes the check
            c["healthcheck"] = {"test": ["CMD-SHELL", f.health_cmd]}
    if f.health_interval is not None:
        _sub(c, "healthcheck")["interval_ms"] = parse.duration_ms(f.health_interval)
    if f.health_retries is not None:
        _sub(c, "healthcheck")["retries"] = f.health_retries


def _apply_confinement(c: Spec, f: SpecFlags) -> None:
    """Looser than the defaults only by name: unknown capabilities and options fail."""
    for name in f.cap_add:
        _swap(c, parse.capability(name), "cap_add", "cap_drop")
    for name in f.cap_drop:
        _swap(c, "ALL" if name.upper() == "ALL" else parse.capability(name), "cap_drop", "cap_add")
    for opt in f.security_opt:
        c["seccomp"] = parse.security_opt(opt)
    if f.pids_limit is not None:
        c["pids_limit"] = f.pids_limit


def _swap(c: Spec, cap: str, into: str, out_of: str) -> None:
    """`cap` leaves the `out_of` list and joins `into` (once)."""
    if cap in c.get(out_of, []):
        c[out_of] = [x for x in c[out_of] if x != cap]
    if cap not in c.get(into, []):
        _list(c, into).append(cap)


def _apply_restart(task: Spec, f: SpecFlags) -> None:
    if not f.restart_given():
        return
    # One flag must not zero the group's other fields: start from the defaults.
    r = task.setdefault("restart", defaults.restart_policy_json())
    if f.restart_condition is not None:
        r["condition"] = parse.restart_condition(f.restart_condition)
    if f.restart_delay is not None:
        r["delay_ms"] = parse.duration_ms(f.restart_delay)
    if f.restart_max_attempts is not None:
        r["max_attempts"] = f.restart_max_attempts
    if f.restart_window is not None:
        r["window_ms"] = parse.duration_ms(f.restart_window)


def _apply_update(spec: Spec, f: SpecFlags) -> None:
    if not f.update_given():
        return
    u = spec.setdefault("update", defaults.update_config_json())
    if f.update_parallelism is not None:
        u["parallelism"] = f.update_parallelism
    if f.update_delay is not None:
        u["delay_ms"] = parse.duration_ms(f.update_delay)
    if f.update_failure_action is not None:
        u["failure_action"] = parse.failure_action(f.update_failure_action)
    if f.update_order is not None:
        u["order"] = parse.update_order(f.update_order)


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


def _published(text: str) -> tuple[int, str]:
    number, _, proto = text.partition("/")
    if not number.isdigit() or proto.lower() not in ("", "tcp", "udp"):
        raise ValueError(f"invalid port {text!r}: expected PUBLISHED[/tcp|udp]")
    return int(number), proto.upper() or "TCP"


def remove_spec_items(
    spec: Spec, r: RemoveFlags, network_id: Callable[[str], str] = lambda ref: ref
) -> None:
    """Removing what is not there is fine: the result is what was asked for."""
    task = _sub(spec, "task")
    c = _sub(task, "container")
    if r.env_rm:
        _keep(c, "env", lambda e: e.partition("=")[0] not in r.env_rm)
    for key in r.label_rm:
        spec.get("annotations", {}).get("labels", {}).pop(key, None)
    if r.constraint_rm:
        _keep(task.get("placement", {}), "constraints", lambda x: x not in r.constraint_rm)
    if r.network_rm:
        gone = {network_id(ref) for ref in r.network_rm}
        _keep(task, "networks", lambda a: a.get("target") not in gone)
    if r.publish_rm:
        ports = {_published(text) for text in r.publish_rm}
        _keep(spec, "ports", lambda p: parse.port_key(p)[:2] not in ports)
    if r.mount_rm:
        _keep(c, "mounts", lambda m: m.get("target", "") not in r.mount_rm)
    if r.secret_rm:
        _keep(c, "secrets", lambda ref: ref.get("name") not in r.secret_rm)
    if r.config_rm:
        _keep(c, "configs", lambda ref: ref.get("name") not in r.config_rm)


# ---------------------------------------------------------------- whole specs


def mode(spec: Spec) -> str:
    """`replicated` or `global`: the spec's `mode` oneof (unset means replicated)."""
    return "global" if "global" in spec else "replicated"


def new_service_spec(
    name: str,
    image: str,
    replicas: int | None,
    mode: str,
    command: tuple[str, ...],
    flags: SpecFlags,
) -> Spec:
    """`service create`'s spec (the caller refused `--replicas` with `--mode global`)."""
    container: Spec = {"image": image}
    if command:
        container["command"] = [command[0]]
        container["args"] = list(command[1:])
    spec: Spec = {"annotations": {"name": name}, "task": {"container": container}}
    if mode == "global":
        spec["global"] = {}
    else:
        spec["replicated"] = {"replicas": parse.check_replicas(1 if replicas is None else replicas)}
    apply_spec_flags(spec, flags)
    return spec


def updated_service_spec(
    current: Spec,
    image: str | None,
    replicas: int | None,
    flags: SpecFlags,
    rm_flags: RemoveFlags,
    network_id: Callable[[str], str],
) -> Spec:
    """`service update`: a copy of the stored spec with what the flags name changed."""
    spec = copy.deepcopy(current)
    if image is not None:
        _sub(spec, "task", "container")["image"] = image
    if replicas is not None:
        if mode(spec) != "replicated":
            raise CLIError("--replicas can only be used with replicated services")
        _sub(spec, "replicated")["replicas"] = replicas
    remove_spec_items(spec, rm_flags, network_id)
    apply_spec_flags(spec, flags, network_id)
    return spec
