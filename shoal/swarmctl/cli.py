"""`swarmctl`: the command line users script against (see CONTRACT.md).

Exit codes: 0 success; 1 the request failed, with one line on stderr; 2 usage.
`--format json` output is the stable contract; tables are for people.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click
import grpc

from shoal import defaults
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import output, parse
from shoal.swarmctl.client import Client, RequestFailed, socket_path

F = TypeVar("F", bound=Callable[..., Any])


class CLIError(click.ClickException):
    """Printed as `Error: <message>` on stderr; exit code 1."""

    exit_code = 1


def errors(fn: F) -> F:
    """Turns bad flag values and failed requests into one-line errors (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, RequestFailed) as err:
            raise CLIError(str(err)) from None
        except grpc.RpcError as err:
            raise CLIError(str(client().error(err))) from None

    return wrapper  # type: ignore[return-value]


def client() -> Client:
    return click.get_current_context().find_root().obj  # type: ignore[no-any-return]


def call(method: str, request: Any, timeout: float = 10.0) -> Any:
    try:
        return client().call(method, request, timeout)
    except RequestFailed as err:
        raise CLIError(str(err)) from None


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    help="Output format (json is the stable one).",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print IDs only.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", help="The manager's control socket [env SWARM_SOCKET].")
@click.pass_context
def cli(ctx: click.Context, socket: str | None) -> None:
    """Control a Shoal cluster."""
    ctx.obj = Client(socket_path(socket))


# ---------------------------------------------------------------- lookups


def network_names() -> dict[str, str]:
    nets = call("ListNetworks", api.ListNetworksRequest()).networks
    return {n.id: n.spec.annotations.name for n in nets}


def hostnames() -> dict[str, str]:
    nodes = call("ListNodes", api.ListNodesRequest()).nodes
    return {n.id: n.description.hostname for n in nodes}


def get_service(ref: str) -> api.ServiceInfo:
    return call("GetService", api.GetServiceRequest(ref=ref)).service  # type: ignore[no-any-return]


# ---------------------------------------------------------------- service spec flags


def spec_options(fn: F) -> F:
    options = [
        click.option("--env", "-e", multiple=True, help="KEY=VALUE"),
        click.option("--label", "-l", multiple=True, help="KEY=VALUE service label"),
        click.option("--container-label", multiple=True, help="KEY=VALUE container label"),
        click.option("--constraint", multiple=True, help="node.labels.K==V and the like"),
        click.option("--network", multiple=True, help="Overlay network to attach to"),
        click.option("--publish", "-p", multiple=True, help="PUBLISHED:TARGET[/tcp|udp]"),
        click.option(
            "--mount", multiple=True, help="type=bind|volume,source=S,target=T[,readonly]"
        ),
        click.option("--user", "-u", help="UID[:GID]"),
        click.option("--workdir", "-w", help="Working directory in the container"),
        click.option("--cpu-limit", help="CPUs, e.g. 0.5"),
        click.option("--memory-limit", help="Bytes, or e.g. 512M"),
        click.option("--cpu-reservation", help="CPUs the scheduler reserves"),
        click.option("--memory-reservation", help="Memory the scheduler reserves"),
        click.option("--restart-condition", type=click.Choice(list(parse.RESTART_CONDITION))),
        click.option("--restart-delay", help="e.g. 5s"),
        click.option("--restart-max-attempts", type=click.IntRange(0)),
        click.option("--restart-window", help="e.g. 1m"),
        click.option("--update-parallelism", type=click.IntRange(0)),
        click.option("--update-delay", help="e.g. 10s"),
        click.option("--update-failure-action", type=click.Choice(list(parse.FAILURE_ACTION))),
        click.option("--update-order", type=click.Choice(list(parse.UPDATE_ORDER))),
        click.option("--health-cmd", help="Command run in the container to check health"),
        click.option("--stop-grace-period", help="Time between SIGTERM and SIGKILL"),
        click.option("--max-replicas-per-node", type=click.IntRange(0)),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _set_env(env: Any, items: tuple[str, ...]) -> None:
    for item in items:
        key, _ = parse.key_value(item, "env")
        kept = [e for e in env if e.partition("=")[0] != key]
        del env[:]
        env.extend([*kept, item])


def apply_spec_flags(spec: pb.ServiceSpec, o: dict[str, Any]) -> None:
    """Changes only the fields whose flags were given."""
    task, c = spec.task, spec.task.container
    _set_env(c.env, o.get("env", ()))
    for item in o.get("label", ()):
        k, v = parse.key_value(item, "label")
        spec.annotations.labels[k] = v
    for item in o.get("container_label", ()):
        k, v = parse.key_value(item, "container label")
        c.labels[k] = v
    for expr in o.get("constraint", ()):
        if expr not in task.placement.constraints:
            task.placement.constraints.append(expr)
    for net in o.get("network", ()):
        if all(a.target != net for a in task.networks):
            task.networks.add(target=net)
    for p in o.get("publish", ()):
        spec.ports.append(parse.port(p))
    for m in o.get("mount", ()):
        c.mounts.append(parse.mount(m))
    if o.get("user") is not None:
        c.user = parse.user(o["user"])
    if o.get("workdir") is not None:
        c.dir = o["workdir"]
    if o.get("cpu_limit") is not None:
        task.limits.nano_cpus = parse.nano_cpus(o["cpu_limit"])
    if o.get("memory_limit") is not None:
        task.limits.memory_bytes = parse.memory_bytes(o["memory_limit"])
    if o.get("cpu_reservation") is not None:
        task.reservations.nano_cpus = parse.nano_cpus(o["cpu_reservation"])
    if o.get("memory_reservation") is not None:
        task.reservations.memory_bytes = parse.memory_bytes(o["memory_reservation"])
    if o.get("health_cmd") is not None:
        del c.healthcheck.test[:]
        c.healthcheck.test.extend(["CMD-SHELL", o["health_cmd"]])
    if o.get("stop_grace_period") is not None:
        c.stop_grace_period_ms = parse.duration_ms(o["stop_grace_period"])
    if o.get("max_replicas_per_node") is not None:
        task.placement.max_replicas_per_node = o["max_replicas_per_node"]

    restart = {
        k: o.get(k)
        for k in ("restart_condition", "restart_delay", "restart_max_attempts", "restart_window")
    }
    if any(v is not None for v in restart.values()):
        if not task.HasField("restart"):
            task.restart.CopyFrom(defaults.restart_policy())
        if restart["restart_condition"] is not None:
            task.restart.condition = parse.RESTART_CONDITION[restart["restart_condition"]]
        if restart["restart_delay"] is not None:
            task.restart.delay_ms = parse.duration_ms(restart["restart_delay"])
        if restart["restart_max_attempts"] is not None:
            task.restart.max_attempts = restart["restart_max_attempts"]
        if restart["restart_window"] is not None:
            task.restart.window_ms = parse.duration_ms(restart["restart_window"])

    update = {
        k: o.get(k)
        for k in ("update_parallelism", "update_delay", "update_failure_action", "update_order")
    }
    if any(v is not None for v in update.values()):
        if not spec.HasField("update"):
            spec.update.CopyFrom(defaults.update_config())
        if update["update_parallelism"] is not None:
            spec.update.parallelism = update["update_parallelism"]
        if update["update_delay"] is not None:
            spec.update.delay_ms = parse.duration_ms(update["update_delay"])
        if update["update_failure_action"] is not None:
            spec.update.failure_action = parse.FAILURE_ACTION[update["update_failure_action"]]
        if update["update_order"] is not None:
            spec.update.order = parse.UPDATE_ORDER[update["update_order"]]


def remove_spec_items(spec: pb.ServiceSpec, o: dict[str, Any]) -> None:
    task, c = spec.task, spec.task.container
    for key in o.get("env_rm", ()):
        kept = [e for e in c.env if e.partition("=")[0] != key]
        del c.env[:]
        c.env.extend(kept)
    for key in o.get("label_rm", ()):
        spec.annotations.labels.pop(key, None)
    for expr in o.get("constraint_rm", ()):
        kept = [x for x in task.placement.constraints if x != expr]
        del task.placement.constraints[:]
        task.placement.constraints.extend(kept)
    for net in o.get("network_rm", ()):
        keep = [a for a in task.networks if a.target != net]
        if len(keep) == len(task.networks):
            names = network_names()
            keep = [a for a in task.networks if names.get(a.target) != net]
        del task.networks[:]
        task.networks.extend(keep)
    for target in o.get("mount_rm", ()):
        keep_m = [m for m in c.mounts if m.target != target]
        del c.mounts[:]
        c.mounts.extend(keep_m)
    for p in o.get("publish_rm", ()):
        keep_p = [x for x in spec.ports if str(x.target_port) != p.partition("/")[0]]
        del spec.ports[:]
        spec.ports.extend(keep_p)


# ---------------------------------------------------------------- convergence


def wait_converged(ref: str, timeout_ms: int, label: str = "") -> None:
    """Follows the service until it runs as declared; CLIError on time-out."""
    tty = sys.stderr.isatty()
    timeout_s = timeout_ms / 1000
    last: api.WatchServiceResponse | None = None
    stream = client().stream("WatchService", api.WatchServiceRequest(ref=ref), timeout_s)
    try:
        for progress in stream:
            last = progress
            if progress.removed:
                raise CLIError(f"service {ref} was removed")
            info = progress.service
            spec = info.service.spec
            want = (
                info.desired if spec.WhichOneof("mode") == "global" else (spec.replicated.replicas)
            )
            if tty:
                sys.stderr.write(
                    f"\r{spec.annotations.name}: {info.running}/{want} running"
                    + (f"  ({progress.task_errors[0]})" if progress.task_errors else "")
                    + "\033[K"
                )
                sys.stderr.flush()
            if info.desired == want and info.running == want and info.running_updated == want:
                if tty:
                    sys.stderr.write("\n")
                return
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CLIError(str(client().error(err))) from None
    finally:
        stream.cancel()
    if tty:
        sys.stderr.write("\n")
    status = ""
    if last is not None and last.HasField("service"):
        info = last.service
        spec = info.service.spec
        want = info.desired if spec.WhichOneof("mode") == "global" else spec.replicated.replicas
        status = f": {info.running}/{want} running"
        if last.task_errors:
            status += f"; {last.task_errors[0]}"
    seconds = f"{timeout_s:g}s"
    raise CLIError(f"service {label or ref} did not converge within {seconds}{status}")


def wait_or_detach(ref: str, detach: bool, timeout: str, label: str = "") -> None:
    if not detach:
        wait_converged(ref, parse.duration_ms(timeout), label)


# ---------------------------------------------------------------- service


@cli.group()
def service() -> None:
    """Manage services."""


@service.command("create", context_settings={"allow_interspersed_args": False})
@click.option("--name", required=True)
@click.option("--image", required=True)
@click.option("--replicas", type=int)
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated")
@spec_options
@click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait.")
@click.option("--timeout", default="60s", show_default=True, help="How long to wait.")
@quiet_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@errors
def service_create(
    name: str,
    image: str,
    replicas: int | None,
    mode: str,
    detach: bool,
    timeout: str,
    quiet: bool,
    command: tuple[str, ...],
    **o: Any,
) -> None:
    """Create a service: swarmctl service create --name web --image IMG [CMD [ARG...]]"""
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    spec.task.container.image = image
    if command:
        spec.task.container.command.extend(command)
    if mode == "global":
        if replicas is not None:
            raise CLIError("--replicas cannot be used with --mode global")
        getattr(spec, "global").SetInParent()
    else:
        if replicas is not None and replicas < 0:
            raise CLIError(f"replicas must be 0 or more, got {replicas}")
        spec.replicated.SetInParent()
        spec.replicated.replicas = 1 if replicas is None else replicas
    apply_spec_flags(spec, o)
    parse.duration_ms(timeout)  # a bad --timeout fails before anything is created
    info = call("CreateService", api.CreateServiceRequest(spec=spec)).service
    wait_or_detach(info.service.id, detach, timeout, name)
    click.echo(info.service.id)


@service.command("update")
@click.argument("ref")
@click.option("--image")
@click.option("--replicas", type=int)
@click.option("--rollback", is_flag=True, help="Go back to the previous spec.")
@click.option("--force", is_flag=True, help="Replace the tasks even if nothing changed.")
@click.option("--env-rm", multiple=True)
@click.option("--label-rm", multiple=True)
@click.option("--constraint-rm", multiple=True)
@click.option("--network-rm", multiple=True)
@click.option("--mount-rm", multiple=True, help="Target path of a mount to remove")
@click.option("--publish-rm", multiple=True, help="Target port to unpublish")
@click.option("--args", "new_args", help="New command arguments (shell-quoted string)")
@spec_options
@click.option("-d", "--detach", is_flag=True)
@click.option("--timeout", default="60s", show_default=True)
@errors
def service_update(
    ref: str,
    image: str | None,
    replicas: int | None,
    rollback: bool,
    force: bool,
    new_args: str | None,
    detach: bool,
    timeout: str,
    **o: Any,
) -> None:
    """Update a service's spec (only the flags given change)."""
    parse.duration_ms(timeout)
    current = get_service(ref).service
    if rollback:
        req = api.UpdateServiceRequest(ref=current.id, version=current.meta.version, rollback=True)
    else:
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        if image is not None:
            spec.task.container.image = image
        if replicas is not None:
            if spec.WhichOneof("mode") != "replicated":
                raise CLIError("--replicas can only be used with replicated services")
            if replicas < 0:
                raise CLIError(f"replicas must be 0 or more, got {replicas}")
            spec.replicated.replicas = replicas
        if new_args is not None:
            import shlex

            del spec.task.container.args[:]
            spec.task.container.args.extend(shlex.split(new_args))
        remove_spec_items(spec, o)
        apply_spec_flags(spec, o)
        if force:
            spec.task.container.labels["shoal.force-update"] = str(current.meta.version)
        req = api.UpdateServiceRequest(ref=current.id, version=current.meta.version, spec=spec)
    call("UpdateService", req)
    wait_or_detach(current.id, detach, timeout, current.spec.annotations.name)
    click.echo(current.spec.annotations.name)


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True)
@click.option("-d", "--detach", is_flag=True)
@click.option("--timeout", default="60s", show_default=True)
@errors
def service_scale(pairs: tuple[str, ...], detach: bool, timeout: str) -> None:
    """Set replicas: swarmctl service scale web=5 [db=2 ...]"""
    parse.duration_ms(timeout)
    wanted: list[tuple[str, int]] = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not text.isdigit():
            raise click.UsageError(f"invalid scale {pair!r}: expected NAME=REPLICAS")
        wanted.append((name, int(text)))
    for name, count in wanted:
        current = get_service(name).service
        if current.spec.WhichOneof("mode") != "replicated":
            raise CLIError(f"{name}: scale can only be used with replicated services")
        spec = pb.ServiceSpec()
        spec.CopyFrom(current.spec)
        spec.replicated.replicas = count
        call(
            "UpdateService",
            api.UpdateServiceRequest(ref=current.id, version=current.meta.version, spec=spec),
        )
    for name, _ in wanted:
        wait_or_detach(name, detach, timeout)
        click.echo(f"{name} scaled")


@service.command("ls")
@quiet_option
@format_option
@errors
def service_ls(quiet: bool, fmt: str) -> None:
    """List services."""
    services = call("ListServices", api.ListServicesRequest()).services
    if quiet:
        for s in services:
            click.echo(s.service.id)
        return
    names = network_names()
    views = [output.service_view(s, names) for s in services]
    if fmt == "json":
        output.print_json(views)
        return
    rows = []
    for v in views:
        want = v["replicas"] if v["mode"] == "replicated" else v["desired"]
        ports = ",".join(f"*:{p['published']}->{p['target']}/{p['protocol']}" for p in v["ports"])
        rows.append(
            [v["id"][:12], v["name"], v["mode"], f"{v['running']}/{want}", v["image"], ports]
        )
    output.print_table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows)


@service.command("inspect")
@click.argument("ref")
@format_option
@errors
def service_inspect(ref: str, fmt: str) -> None:
    """Show a service."""
    output.print_json(output.service_view(get_service(ref), network_names()))


def _task_rows(tasks: list[pb.Task], names: dict[str, str]) -> Iterator[list[Any]]:
    groups: dict[tuple[str, int, str], list[pb.Task]] = {}
    for t in tasks:
        key = (t.service_name, int(t.slot), t.node_id if t.slot == 0 else "")
        groups.setdefault(key, []).append(t)
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda t: t.meta.created_at_ms, reverse=True)
        for i, t in enumerate(group):
            label = f"{t.service_name}.{t.slot}" if t.slot else f"{t.service_name}.{t.node_id[:12]}"
            yield [
                t.id[:12],
                label if i == 0 else f" \\_ {label}",
                t.spec.container.image,
                names.get(t.node_id, t.node_id[:12]) if t.node_id else "",
                output.state_name(t.desired_state).capitalize(),
                f"{output.state_name(t.status.state).capitalize()} "
                f"{output.ago(t.status.timestamp_ms)}",
                t.status.err,
            ]


def print_tasks(tasks: list[pb.Task], quiet: bool, fmt: str) -> None:
    if quiet:
        for t in tasks:
            click.echo(t.id)
        return
    names = hostnames()
    if fmt == "json":
        output.print_json([output.task_view(t, names) for t in tasks])
        return
    output.print_table(
        ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"],
        list(_task_rows(tasks, names)),
    )


@service.command("ps")
@click.argument("ref")
@quiet_option
@format_option
@errors
def service_ps(ref: str, quiet: bool, fmt: str) -> None:
    """List a service's tasks (the newest of each slot first)."""
    tasks = list(call("ListTasks", api.ListTasksRequest(service_ref=ref)).tasks)
    print_tasks(tasks, quiet, fmt)


@service.command("logs")
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=click.IntRange(0), default=0, help="Only the last N lines per task.")
@errors
def service_logs(ref: str, follow: bool, tail: int) -> None:
    """Print the output of a service's tasks."""
    info = get_service(ref)
    name = info.service.spec.annotations.name
    names = hostnames()
    partial: dict[str, bytes] = {}
    stream = client().stream(
        "ServiceLogs", api.ServiceLogsRequest(ref=info.service.id, follow=follow, tail=tail)
    )
    out = sys.stdout.buffer
    try:
        for chunk in stream:
            prefix = (
                f"{name}.{chunk.slot}.{chunk.task_id[:12]}@"
                f"{names.get(chunk.node_id, chunk.node_id[:12])} | "
            ).encode()
            data = partial.pop(chunk.task_id, b"") + chunk.data
            *lines, rest = data.split(b"\n")
            for line in lines:
                out.write(prefix + line + b"\n")
            if rest:
                partial[chunk.task_id] = rest
            out.flush()
    except KeyboardInterrupt:
        stream.cancel()
    for task_id, rest in partial.items():
        out.write(f"{name}.{task_id[:12]} | ".encode() + rest + b"\n")
    out.flush()


@service.command("rm")
@click.argument("refs", nargs=-1, required=True)
@errors
def service_rm(refs: tuple[str, ...]) -> None:
    """Remove services."""
    failed = False
    for ref in refs:
        try:
            click.echo(call("RemoveService", api.RemoveServiceRequest(ref=ref)).id)
        except CLIError as err:
            click.echo(f"Error: {err.message}", err=True)
            failed = True
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------- node


@cli.group()
def node() -> None:
    """Manage nodes."""


@node.command("ls")
@quiet_option
@format_option
@errors
def node_ls(quiet: bool, fmt: str) -> None:
    """List nodes."""
    nodes = call("ListNodes", api.ListNodesRequest()).nodes
    if quiet:
        for n in nodes:
            click.echo(n.id)
        return
    views = [output.node_view(n) for n in nodes]
    if fmt == "json":
        output.print_json(views)
        return
    output.print_table(
        ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR"],
        [
            [v["id"][:12], v["hostname"], v["status"], v["availability"], v["role"], v["addr"]]
            for v in views
        ],
    )


@node.command("inspect")
@click.argument("ref")
@format_option
@errors
def node_inspect(ref: str, fmt: str) -> None:
    """Show a node."""
    output.print_json(output.node_view(call("GetNode", api.GetNodeRequest(ref=ref)).node))


@node.command("update")
@click.argument("ref")
@click.option("--availability", type=click.Choice(list(parse.AVAILABILITY)))
@click.option("--label-add", multiple=True, help="KEY=VALUE")
@click.option("--label-rm", multiple=True, help="KEY")
@errors
def node_update(
    ref: str, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...]
) -> None:
    """Change a node's availability or labels."""
    current = call("GetNode", api.GetNodeRequest(ref=ref)).node
    spec = pb.NodeSpec()
    spec.CopyFrom(current.spec)
    if availability is not None:
        spec.availability = parse.AVAILABILITY[availability]
    for item in label_add:
        k, v = parse.key_value(item, "label")
        spec.labels[k] = v
    for key in label_rm:
        if key not in spec.labels:
            raise CLIError(f"node {ref} has no label {key!r}")
        del spec.labels[key]
    call(
        "UpdateNode", api.UpdateNodeRequest(ref=current.id, version=current.meta.version, spec=spec)
    )
    click.echo(current.id)


@node.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Remove even a node that is up.")
@errors
def node_rm(refs: tuple[str, ...], force: bool) -> None:
    """Remove nodes from the cluster."""
    for ref in refs:
        click.echo(call("RemoveNode", api.RemoveNodeRequest(ref=ref, force=force)).id)


# ---------------------------------------------------------------- task


@cli.group()
def task() -> None:
    """Inspect tasks."""


@task.command("ls")
@click.option("--service", "service_ref", default="")
@click.option("--node", "node_ref", default="")
@quiet_option
@format_option
@errors
def task_ls(service_ref: str, node_ref: str, quiet: bool, fmt: str) -> None:
    """List tasks."""
    tasks = list(
        call("ListTasks", api.ListTasksRequest(service_ref=service_ref, node_ref=node_ref)).tasks
    )
    print_tasks(tasks, quiet, fmt)


@task.command("inspect")
@click.argument("ref")
@format_option
@errors
def task_inspect(ref: str, fmt: str) -> None:
    """Show a task."""
    output.print_json(
        output.task_view(call("GetTask", api.GetTaskRequest(ref=ref)).task, hostnames())
    )


# ---------------------------------------------------------------- network


@cli.group()
def network() -> None:
    """Manage overlay networks."""


@network.command("create")
@click.argument("name")
@click.option("--driver", default="overlay", show_default=True)
@click.option("--subnet", default="", help="CIDR; picked from the default pool if not given")
@click.option("--label", multiple=True, help="KEY=VALUE")
@errors
def network_create(name: str, driver: str, subnet: str, label: tuple[str, ...]) -> None:
    """Create an overlay network."""
    spec = pb.NetworkSpec(annotations=pb.Annotations(name=name), driver=driver, subnet=subnet)
    for item in label:
        k, v = parse.key_value(item, "label")
        spec.annotations.labels[k] = v
    click.echo(call("CreateNetwork", api.CreateNetworkRequest(spec=spec)).network.id)


@network.command("ls")
@quiet_option
@format_option
@errors
def network_ls(quiet: bool, fmt: str) -> None:
    """List networks."""
    nets = call("ListNetworks", api.ListNetworksRequest()).networks
    if quiet:
        for n in nets:
            click.echo(n.id)
        return
    views = [output.network_view(n) for n in nets]
    if fmt == "json":
        output.print_json(views)
        return
    output.print_table(
        ["ID", "NAME", "DRIVER", "SUBNET", "VNI"],
        [[v["id"][:12], v["name"], v["driver"], v["subnet"], v["vni"]] for v in views],
    )


@network.command("inspect")
@click.argument("ref")
@format_option
@errors
def network_inspect(ref: str, fmt: str) -> None:
    """Show a network."""
    output.print_json(
        output.network_view(call("GetNetwork", api.GetNetworkRequest(ref=ref)).network)
    )


@network.command("rm")
@click.argument("refs", nargs=-1, required=True)
@errors
def network_rm(refs: tuple[str, ...]) -> None:
    """Remove networks no service uses."""
    for ref in refs:
        click.echo(call("RemoveNetwork", api.RemoveNetworkRequest(ref=ref)).id)


# ---------------------------------------------------------------- cluster


@cli.group()
def cluster() -> None:
    """The cluster itself."""


@cluster.command("inspect")
@format_option
@errors
def cluster_inspect(fmt: str) -> None:
    """Show the cluster's settings."""
    output.print_json(output.cluster_view(call("GetCluster", api.GetClusterRequest()).cluster))


@cluster.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("--rotate", is_flag=True, help="Replace the token; the old one stops working.")
@quiet_option
@format_option
@errors
def cluster_join_token(role: str, rotate: bool, quiet: bool, fmt: str) -> None:
    """Print (or rotate) the token that joins a node."""
    if rotate:
        pb_role = pb.ROLE_MANAGER if role == "manager" else pb.ROLE_WORKER
        cl = call("RotateJoinToken", api.RotateJoinTokenRequest(role=pb_role)).cluster
    else:
        cl = call("GetCluster", api.GetClusterRequest()).cluster
    tokens = {"worker": cl.join_tokens.worker, "manager": cl.join_tokens.manager}
    if fmt == "json":
        output.print_json(tokens)
    elif quiet:
        click.echo(tokens[role])
    else:
        command = "worker" if role == "worker" else "manager --etcd-endpoints <same etcd>"
        click.echo(
            f"To add a {role} to this cluster, run:\n\n"
            f"    swarmd {command} --state-dir /var/lib/shoal \\\n"
            f"        --join-token {tokens[role]} --join-addr <manager-addr>:4242\n"
        )


def main() -> None:
    cli(prog_name="swarmctl")


if __name__ == "__main__":
    main()
