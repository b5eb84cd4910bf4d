"""`swarmctl service ...`.

create and update (and the wait for convergence) go over the manager's HTTP
socket with specs in their JSON form (spec.py), like the reads: they load neither
gRPC nor protobuf; scale and rm are in light.py. `logs` streams over gRPC (loaded
when it runs).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shoal.swarmctl import output, parse
from shoal.swarmctl import spec as specs
from shoal.swarmctl.commands import light, reads
from shoal.swarmctl.session import client, rest, retry_conflicts
from shoal.swarmctl.wait import wait_converged, wait_options


@click.group("service")
def group() -> None:
    """Manage services."""


reads.add_to(group)
light.add_to(group)


@group.command(
    "create",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False},
)
@click.option("--name", required=True, help="Service name.")
@click.option("--image", required=True, help="Image reference.")
@click.option("--replicas", type=int, help="Tasks to run (replicated mode; default 1).")
@click.option("--mode", type=click.Choice(["replicated", "global"]), default="replicated")
@specs.spec_options
@wait_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[COMMAND [ARG...]]")
def create(
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
    if mode == "global" and replicas is not None:
        raise click.UsageError("--replicas cannot be used with --mode global")
    spec = specs.new_service_spec(name, image, replicas, mode, command, specs.SpecFlags.take(flags))
    created = rest().post("services", body={"spec": spec})
    warn(created)
    if not detach:
        wait_converged(created["id"], name, timeout_ms)
    click.echo(created["id"])


@group.command("update")
@click.argument("ref", metavar="NAME|ID")
@click.option("--image", help="New image reference.")
@click.option("--replicas", type=int, help="New number of tasks (replicated mode).")
@click.option("--rollback", is_flag=True, help="Go back to the previous spec.")
@click.option("--force", is_flag=True, help="Replace every task, resolving the image tag again.")
@specs.spec_options
@specs.remove_options
@wait_options
def update(
    ref: str,
    image: str | None,
    replicas: int | None,
    rollback: bool,
    force: bool,
    detach: bool,
    timeout: str,
    **flags: Any,
) -> None:
    """Change a service; only what the flags name changes. Waits for the rollout."""
    timeout_ms = parse.duration_ms(timeout)
    spec_flags, rm_flags = specs.SpecFlags.take(flags), specs.RemoveFlags.take(flags)
    changes = image is not None or replicas is not None
    if rollback and (changes or force or spec_flags.any_given() or rm_flags.any_given()):
        raise click.UsageError("--rollback cannot be combined with other changes")
    if replicas is not None:
        parse.check_replicas(replicas)
    network_ids: dict[str, str] = {}

    def network_id(net: str) -> str:
        # The stored spec holds network IDs; compare like with like.
        if net not in network_ids:
            network_ids[net] = rest().get("networks", net)["id"]
        return str(network_ids[net])

    def attempt() -> Any:
        current = rest().get("services", ref, "spec")
        change: dict[str, Any] = {"version": current["version"]}
        if rollback:
            change["rollback"] = True
        else:
            change["spec"] = specs.updated_service_spec(
                current["spec"], image, replicas, spec_flags, rm_flags, network_id
            )
            change["force"] = force
        return rest().post("services", current["id"], "update", body=change)

    updated = retry_conflicts(attempt)
    warn(updated)
    name = updated["name"]
    if not detach:
        wait_converged(updated["id"], name, timeout_ms, rollback_asked=rollback)
    click.echo(name)


def warn(service: dict[str, Any]) -> None:
    for warning in service["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@group.command("logs")
@click.argument("ref", metavar="NAME|ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("--tail", type=click.IntRange(0), default=0, help="Only the last N lines per task.")
def logs(ref: str, follow: bool, tail: int) -> None:
    """Print the output of a service's tasks, each line prefixed with its task."""
    info = client().get_service(ref)
    name = info.service.spec.annotations.name
    names = reads.hostnames()
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
            *lines, pending = (partial.pop(chunk.task_id, b"") + chunk.data).split(b"\n")
            for line in lines:
                out.write(prefix + line + b"\n")
            if pending:
                partial[chunk.task_id] = pending
            out.flush()
    except KeyboardInterrupt:
        pass  # the way to stop --follow
    for task_id, pending in partial.items():
        out.write(prefixes[task_id] + pending + b"\n")
    out.flush()
