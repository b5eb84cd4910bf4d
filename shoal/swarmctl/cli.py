"""`swarmctl`: the command line users script against (see CONTRACT.md).

Exit codes: 0 success; 1 the request failed, with one `Error: ...` line on
stderr; 2 usage error (click's own). `--format json` output is the stable
contract; tables and progress lines are for people.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click
import grpc

from shoal import defaults
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import output, parse
from shoal.swarmctl.client import Client, CLIError, one_line, resolve_socket

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

CONFLICT_RETRIES = 3


class Group(click.Group):
    """Turns failed requests and bad flag values into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CLIError, ValueError) as err:
            raise click.ClickException(one_line(str(err))) from None


class Session:
    """The root context's object: the socket, and a client made on first use."""

    def __init__(self, socket: str) -> None:
        self.socket = socket
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def client() -> Client:
    session = click.get_current_context().find_object(Session)
    assert session is not None, "commands run under the root group"
    return session.client


def retry_conflicts(attempt: Callable[[], T]) -> T:
    """Read-modify-write: a concurrent change (ABORTED) means read again and reapply."""
    for n in range(CONFLICT_RETRIES):
        try:
            return attempt()
        except CLIError as err:
            if err.code != grpc.StatusCode.ABORTED or n == CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def report(err: CLIError) -> None:
    """An error of one item of several; the command goes on and exits 1 at the end."""
    click.echo(f"Error: {err}", err=True)


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format; json is the stable one.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print IDs only.")


def wait_options(fn: F) -> F:
    fn = click.option(
        "--timeout",
        default="60s",
        show_default=True,
        help="How long to wait for the service to converge.",
    )(fn)
    fn = click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait.")(fn)
    return fn


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", metavar="PATH", help="The manager's control socket [env SWARM_SOCKET].")
@click.pass_context
def cli(ctx: click.Context, socket: str | None) -> None:
    """Control a Shoal cluster."""
    session = Session(resolve_socket(socket))
    ctx.obj = session
    ctx.call_on_close(session.close)


# ---------------------------------------------------------------- service spec flags


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
    _apply_restart(task, f)
    _apply_update(spec, f)


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


def check_replicas(n: int) -> int:
    if n < 0:
        raise ValueError(f"replicas must be 0 or more, got {n}")
    if n > defaults.MAX_REPLICAS:
        raise ValueError(f"replicas must be between 0 and {defaults.MAX_REPLICAS}, got {n}")
    return n


# ---------------------------------------------------------------- convergence


def converged(info: api.ServiceInfo) -> bool:
    """Every task the service wants runs, made from its current spec."""
    n = output.want(info)
    if n == 0 and info.service.spec.WhichOneof("mode") == "global":
        return False  # the orchestrator has not placed the global tasks yet
    return info.desired == n and info.running == n and info.running_updated == n


def status_line(progress: api.WatchServiceResponse | None) -> str:
    if progress is None or not progress.HasField("service"):
        return ""
    info = progress.service
    line = f"{info.running}/{output.want(info)} running"
    if progress.task_errors:
        line += f"; {progress.task_errors[0]}"
    return line


_UPDATE_PAUSED = (pb.UpdateStatus.PAUSED, pb.UpdateStatus.ROLLBACK_PAUSED)
_ROLLED_BACK = (pb.UpdateStatus.ROLLBACK_STARTED, pb.UpdateStatus.ROLLBACK_COMPLETED)


def wait_converged(
    ref: str,
    name: str,
    timeout_ms: int,
    deadline: float | None = None,
    rollback_asked: bool = False,
) -> None:
    """Follows the service over WatchService until it converges; CLIError when time is up,
    or when the manager paused the update (or rolled it back)."""
    end = deadline if deadline is not None else time.monotonic() + timeout_ms / 1000
    started_ms = int(time.time() * 1000) - 1000
    tty = sys.stderr.isatty()
    last: api.WatchServiceResponse | None = None
    try:
        # At least a moment, so a shared deadline that ran out still shows where it stands.
        for progress in client().watch_service(ref, max(end - time.monotonic(), 1.0)):
            if progress.removed:
                raise CLIError(f"service {name} was removed while waiting for it to converge")
            last = progress
            if tty:
                info = progress.service
                line = f"{name}: {info.running}/{output.want(info)} running"
                width = shutil.get_terminal_size().columns - 1
                sys.stderr.write(f"\r{line[:width]}\x1b[K")
                sys.stderr.flush()
            update = progress.service.service.update_status
            stopped = update.state in _UPDATE_PAUSED or (
                update.state in _ROLLED_BACK and not rollback_asked
            )
            if stopped and update.started_at_ms >= started_ms:
                # The manager stopped or reverted this update: say so, and why.
                raise CLIError(f"service {name}: {update.message or 'update failed'}")
            if converged(progress.service):
                return
    finally:
        if tty and last is not None:
            sys.stderr.write("\n")
    status = status_line(last)
    raise CLIError(
        f"service {name} did not converge within {timeout_ms / 1000:g}s"
        + (f": {status}" if status else "")
    )


# ---------------------------------------------------------------- service


@cli.group()
def service() -> None:
    """Manage services."""


@service.command(
    "create",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False},
)
@click.option("--name", required=True, help="Service name.")
@click.option("--image", required=True, help="Image reference.")
@click.option("--replicas", type=int, help="Tasks to run (replicated mode; default 1).")
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated")
@spec_options
@wait_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND [ARG...]]")
def service_create(
    name: str,
    image: str,
    replicas: int | None,
    mode: str,
    detach: bool,
    timeout: str,
    command: tuple[str, ...],
    **flags: Any,
) -> None:
    """Create a service and wait until it runs.

    swarmctl service create --name web --image IMAGE [--replicas N] [COMMAND [ARG...]]
    """
    timeout_ms = parse.duration_ms(timeout)
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.task.container.image = image
    if command:
        spec.task.container.command.append(command[0])
        spec.task.container.args.extend(command[1:])
    if mode == "global":
        if replicas is not None:
            raise click.UsageError("--replicas cannot be used with --mode global")
        getattr(spec, "global").SetInParent()  # `global` is a Python keyword
    else:
        spec.replicated.replicas = check_replicas(1 if replicas is None else replicas)
    apply_spec_flags(spec, SpecFlags.take(flags))
    created = client().create_service(spec).service
    if not detach:
        wait_converged(created.id, name, timeout_ms)
    click.echo(created.id)


@service.command("update")
@click.argument("ref", metavar="NAME|ID")
@click.option("--image", help="New image reference.")
@click.option("--replicas", type=int, help="New number of tasks (replicated mode).")
@click.option("--rollback", is_flag=True, help="Go back to the previous spec.")
@spec_options
@remove_options
@wait_options
def service_update(
    ref: str,
    image: str | None,
    replicas: int | None,
    rollback: bool,
    detach: bool,
    timeout: str,
    **flags: Any,
) -> None:
    """Change a service; only what the flags name changes. Waits for the rollout."""
    timeout_ms = parse.duration_ms(timeout)
    spec_flags, rm_flags = SpecFlags.take(flags), RemoveFlags.take(flags)
    changes = image is not None or replicas is not None
    if rollback and (changes or spec_flags.any_given() or rm_flags.any_given()):
        raise click.UsageError("--rollback cannot be combined with other changes")
    if replicas is not None:
        check_replicas(replicas)
    network_ids: dict[str, str] = {}

    def network_id(net: str) -> str:
        # The stored spec holds network IDs; compare like with like.
        if net not in network_ids:
            network_ids[net] = client().get_network(net).id
        return network_ids[net]

    def attempt() -> api.ServiceInfo:
        current = client().get_service(ref).service
        if rollback:
            return client().update_service(current.id, current.meta.version, rollback=True)
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        if image is not None:
            spec.task.container.image = image
        if replicas is not None:
            if spec.WhichOneof("mode") != "replicated":
                raise CLIError("--replicas can only be used with replicated services")
            spec.replicated.replicas = replicas
        remove_spec_items(spec, rm_flags, network_id)
        apply_spec_flags(spec, spec_flags, network_id)
        return client().update_service(current.id, current.meta.version, spec)

    updated = retry_conflicts(attempt).service
    name = updated.spec.annotations.name
    if not detach:
        wait_converged(updated.id, name, timeout_ms, rollback_asked=rollback)
    click.echo(name)


def _scale_one(name: str, count: int) -> str:
    def attempt() -> str:
        current = client().get_service(name).service
        if current.spec.WhichOneof("mode") != "replicated":
            raise CLIError(f"{name}: scale can only be used with replicated services")
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        spec.replicated.replicas = count
        client().update_service(current.id, current.meta.version, spec)
        return current.id

    return retry_conflicts(attempt)


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=REPLICAS...")
@wait_options
@click.pass_context
def service_scale(ctx: click.Context, pairs: tuple[str, ...], detach: bool, timeout: str) -> None:
    """Set the replicas of services: swarmctl service scale web=5 [db=2 ...]"""
    try:
        wanted = [parse.scale_pair(p) for p in pairs]
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    timeout_ms = parse.duration_ms(timeout)
    for _, count in wanted:
        check_replicas(count)
    failed = False
    scaled: list[tuple[str, str]] = []
    for name, count in wanted:
        try:
            scaled.append((name, _scale_one(name, count)))
        except CLIError as err:
            report(err)
            failed = True
    deadline = time.monotonic() + timeout_ms / 1000
    for name, service_id in scaled:
        try:
            if not detach:
                wait_converged(service_id, name, timeout_ms, deadline)
            click.echo(name)
        except CLIError as err:
            report(err)
            failed = True
    if failed:
        ctx.exit(1)


@service.command("ls")
@quiet_option
@format_option
def service_ls(quiet: bool, fmt: str) -> None:
    """List services."""
    services = client().list_services()
    if quiet:
        for s in services:
            click.echo(s.service.id)
        return
    names = network_names() if any(s.service.spec.task.networks for s in services) else {}
    views = [output.service_view(s, names) for s in services]
    if fmt == "json":
        output.print_json(views)
    else:
        output.print_table(output.SERVICE_HEADERS, output.service_rows(views))


def network_names() -> dict[str, str]:
    return {n.id: n.spec.annotations.name for n in client().list_networks()}


def hostnames() -> dict[str, str]:
    return {n.id: n.description.hostname for n in client().list_nodes()}


@service.command("inspect")
@click.argument("ref", metavar="NAME|ID")
@format_option
def service_inspect(ref: str, fmt: str) -> None:
    """Show a service (as JSON in both formats)."""
    info = client().get_service(ref)
    names = network_names() if info.service.spec.task.networks else {}
    output.print_json(output.service_view(info, names))


def print_tasks(tasks: list[pb.Task], quiet: bool, fmt: str) -> None:
    if quiet:
        for t in tasks:
            click.echo(t.id)
        return
    names = hostnames() if any(t.node_id for t in tasks) else {}
    if fmt == "json":
        output.print_json([output.task_view(t, names) for t in tasks])
    else:
        output.print_table(output.TASK_HEADERS, output.task_rows(tasks, names))


@service.command("ps")
@click.argument("ref", metavar="NAME|ID")
@quiet_option
@format_option
def service_ps(ref: str, quiet: bool, fmt: str) -> None:
    """List a service's tasks, the newest of each slot first, with its published ports."""
    svc = client().get_service(ref).service
    tasks = client().list_tasks(service_ref=svc.id)
    if quiet or not svc.endpoint.ports:
        print_tasks(tasks, quiet, fmt)
        return
    names = hostnames() if any(t.node_id for t in tasks) else {}
    if fmt == "json":
        output.print_json(output.tasks_with_ports(tasks, names, svc.endpoint.ports))
    else:
        rows = output.task_rows(tasks, names)
        output.print_table([*output.TASK_HEADERS, "PORTS"], output.with_ports(rows, tasks, svc))


@service.command("logs")
@click.argument("ref", metavar="NAME|ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("--tail", type=click.IntRange(0), default=0, help="Only the last N lines per task.")
def service_logs(ref: str, follow: bool, tail: int) -> None:
    """Print the output of a service's tasks, each line prefixed with its task."""
    info = client().get_service(ref)
    name = info.service.spec.annotations.name
    names = hostnames()
    partial: dict[str, bytes] = {}
    prefixes: dict[str, bytes] = {}
    out = sys.stdout.buffer
    try:
        for chunk in client().service_logs(info.service.id, follow, tail):
            prefix = prefixes.setdefault(
                chunk.task_id,
                f"{name}.{chunk.slot}.{chunk.task_id[: output.SHORT_ID]}@"
                f"{names.get(chunk.node_id, chunk.node_id[: output.SHORT_ID])} | ".encode(),
            )
            # Chunks cut lines anywhere; hold a tail until its newline arrives.
            *lines, rest = (partial.pop(chunk.task_id, b"") + chunk.data).split(b"\n")
            for line in lines:
                out.write(prefix + line + b"\n")
            if rest:
                partial[chunk.task_id] = rest
            out.flush()
    except KeyboardInterrupt:
        pass  # the way to stop --follow
    for task_id, rest in partial.items():
        out.write(prefixes[task_id] + rest + b"\n")
    out.flush()


@service.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
@click.pass_context
def service_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove services; their tasks are stopped."""
    remove_each(ctx, refs, client().remove_service)


def remove_each(ctx: click.Context, refs: Iterable[str], remove: Callable[[str], str]) -> None:
    """Prints each removed ID; goes on past failures and exits 1 if there were any."""
    failed = False
    for ref in refs:
        try:
            click.echo(remove(ref))
        except CLIError as err:
            report(err)
            failed = True
    if failed:
        ctx.exit(1)


# ---------------------------------------------------------------- node


@cli.group()
def node() -> None:
    """Manage nodes."""


@node.command("ls")
@quiet_option
@format_option
def node_ls(quiet: bool, fmt: str) -> None:
    """List nodes."""
    nodes = client().list_nodes()
    if quiet:
        for n in nodes:
            click.echo(n.id)
        return
    views = [output.node_view(n) for n in nodes]
    if fmt == "json":
        output.print_json(views)
    else:
        output.print_table(output.NODE_HEADERS, output.node_rows(views))


@node.command("inspect")
@click.argument("ref", metavar="NODE")
@format_option
def node_inspect(ref: str, fmt: str) -> None:
    """Show a node (as JSON in both formats)."""
    output.print_json(output.node_view(client().get_node(ref)))


@node.command("update")
@click.argument("ref", metavar="NODE")
@click.option("--availability", type=click.Choice(list(parse.AVAILABILITY)))
@click.option("--label-add", multiple=True, metavar="K=V", help="Add or change a label.")
@click.option("--label-rm", multiple=True, metavar="K", help="Remove a label.")
def node_update(
    ref: str, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...]
) -> None:
    """Change a node's availability or labels."""
    if availability is None and not label_add and not label_rm:
        raise click.UsageError("nothing to change: give --availability, --label-add or --label-rm")
    labels = [parse.key_value(item, "label") for item in label_add]

    def attempt() -> pb.Node:
        current = client().get_node(ref)
        spec = pb.NodeSpec()
        spec.CopyFrom(current.spec)
        if availability is not None:
            spec.availability = parse.availability(availability)
        for key in label_rm:
            spec.labels.pop(key, None)
        for key, value in labels:
            spec.labels[key] = value
        return client().update_node(current.id, current.meta.version, spec)

    click.echo(retry_conflicts(attempt).id)


@node.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@click.option("--force", is_flag=True, help="Remove even a node that is up.")
@click.pass_context
def node_rm(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove nodes from the cluster; their tasks are rescheduled."""
    remove_each(ctx, refs, lambda ref: client().remove_node(ref, force))


# ---------------------------------------------------------------- task


@cli.group()
def task() -> None:
    """Inspect tasks."""


@task.command("ls")
@click.option("--service", "service_ref", default="", metavar="NAME|ID", help="Of this service.")
@click.option("--node", "node_ref", default="", metavar="NODE", help="On this node.")
@quiet_option
@format_option
def task_ls(service_ref: str, node_ref: str, quiet: bool, fmt: str) -> None:
    """List tasks."""
    print_tasks(client().list_tasks(service_ref, node_ref), quiet, fmt)


@task.command("inspect")
@click.argument("ref", metavar="TASK")
@format_option
def task_inspect(ref: str, fmt: str) -> None:
    """Show a task (as JSON in both formats)."""
    t = client().get_task(ref)
    output.print_json(output.task_view(t, hostnames() if t.node_id else {}))


# ---------------------------------------------------------------- network


@cli.group()
def network() -> None:
    """Manage overlay networks."""


@network.command("create")
@click.argument("name")
@click.option("--driver", default="overlay", show_default=True, help="Network driver.")
@click.option("--subnet", default="", metavar="CIDR", help="Picked from the pool if not given.")
@click.option("--label", multiple=True, metavar="K=V", help="Network label.")
@click.option("--internal", is_flag=True, help="No egress: tasks reach nothing outside.")
def network_create(
    name: str, driver: str, subnet: str, label: tuple[str, ...], internal: bool
) -> None:
    """Create an overlay network."""
    spec = pb.NetworkSpec(
        annotations=pb.Annotations(name=name), driver=driver, subnet=subnet, internal=internal
    )
    for item in label:
        key, value = parse.key_value(item, "label")
        spec.annotations.labels[key] = value
    click.echo(client().create_network(spec).id)


@network.command("ls")
@quiet_option
@format_option
def network_ls(quiet: bool, fmt: str) -> None:
    """List networks."""
    nets = client().list_networks()
    if quiet:
        for n in nets:
            click.echo(n.id)
        return
    views = [output.network_view(n) for n in nets]
    if fmt == "json":
        output.print_json(views)
    else:
        output.print_table(output.NETWORK_HEADERS, output.network_rows(views))


@network.command("inspect")
@click.argument("ref", metavar="NAME|ID")
@format_option
def network_inspect(ref: str, fmt: str) -> None:
    """Show a network (as JSON in both formats)."""
    output.print_json(output.network_view(client().get_network(ref)))


@network.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
@click.pass_context
def network_rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove networks that no service uses."""
    remove_each(ctx, refs, client().remove_network)


# ---------------------------------------------------------------- cluster


@cli.group()
def cluster() -> None:
    """The cluster itself."""


@cluster.command("inspect")
@format_option
def cluster_inspect(fmt: str) -> None:
    """Show the cluster's settings (as JSON in both formats)."""
    output.print_json(output.cluster_view(client().get_cluster()))


@cluster.command("update")
@click.option("--heartbeat-period", help="How often agents report, e.g. 2s.")
@click.option(
    "--heartbeat-misses",
    type=click.IntRange(1),
    help="Missed heartbeats before a node is marked down.",
)
@click.option(
    "--task-history-limit", type=click.IntRange(0), help="Dead task records kept per slot."
)
@click.option("--cert-expiry", help="Validity of node certificates, e.g. 2160h.")
@click.option(
    "--rebalance/--no-rebalance",
    default=None,
    help="Rebalance every replicated service when nodes join or come back.",
)
@click.option("--vip-range", metavar="CIDR", help="Where new services' virtual IPs come from.")
def cluster_update(
    heartbeat_period: str | None,
    heartbeat_misses: int | None,
    task_history_limit: int | None,
    cert_expiry: str | None,
    rebalance: bool | None,
    vip_range: str | None,
) -> None:
    """Change the cluster's settings (only the flags given change)."""
    current = client().get_cluster()
    spec = pb.ClusterSpec()
    spec.CopyFrom(current.spec)
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
    click.echo(client().update_cluster(current.meta.version, spec).id)


_JOIN_COMMAND = {
    "worker": "swarmd worker --state-dir /var/lib/shoal",
    # A second manager shares the first one's etcd (not an embedded one: that is
    # on the first manager's loopback).
    "manager": "swarmd manager --state-dir /var/lib/shoal --etcd-endpoints <etcd-url>",
}


@cluster.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Replace the token; the old one stops working.")
@quiet_option
@format_option
def cluster_join_token(role: str, rotate: bool, quiet: bool, fmt: str) -> None:
    """Print (or rotate) the token a new worker or manager joins with."""
    if rotate:
        new_role = pb.ROLE_MANAGER if role == "manager" else pb.ROLE_WORKER
        c = client().rotate_join_token(new_role)
    else:
        c = client().get_cluster()
    tokens = output.join_tokens_view(c)
    if quiet:
        click.echo(tokens[role])
    elif fmt == "json":
        output.print_json(tokens)
    else:
        if rotate:
            click.echo(f"Rotated the {role} join token; the old one no longer works.\n")
        click.echo(
            f"To add a {role} to this cluster, run:\n\n"
            f"    {_JOIN_COMMAND[role]} --join-token {tokens[role]} "
            "--join-addr <manager-addr>:4242\n"
        )


def main() -> None:
    try:
        cli.main(prog_name="swarmctl")
    except Exception as err:  # a bug: still one line and exit 1, never a traceback
        click.echo(f"Error: unexpected {type(err).__name__}: {one_line(str(err))}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
