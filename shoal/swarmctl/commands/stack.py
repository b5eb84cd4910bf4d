"""`swarmctl stack ...`: compose files converted here, applied by the manager at once."""

from __future__ import annotations

from pathlib import Path

import click

from shoal.proto import control_pb2 as api
from shoal.swarmctl import listing, output
from shoal.swarmctl.commands.reads import SERVICES, TASKS
from shoal.swarmctl.compose import ComposeError, build
from shoal.swarmctl.errors import CLIError
from shoal.swarmctl.listing import format_option, quiet_option
from shoal.swarmctl.session import client, rest


@click.group("stack")
def group() -> None:
    """Deploy and manage stacks (apps from compose files)."""


def _change_lines(changes: list[api.StackChange], prefix: str = "") -> None:
    for c in changes:
        if c.action == "unchanged":
            continue
        details = f" ({', '.join(c.details)})" if c.details else ""
        click.echo(f"{prefix}{c.action} {c.kind} {c.name}{details}")


def _change_views(changes: list[api.StackChange]) -> list[dict[str, object]]:
    return [
        {"kind": c.kind, "name": c.name, "action": c.action, "details": list(c.details)}
        for c in changes
    ]


@group.command("deploy")
@click.option(
    "-c",
    "--compose-file",
    "files",
    multiple=True,
    required=True,
    metavar="FILE",
    help="Compose file; several merge in order (later ones win).",
)
@click.option("--prune", is_flag=True, help="Remove services no longer in the files.")
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@format_option
@click.argument("name")
def stack_deploy(files: tuple[str, ...], prune: bool, dry_run: bool, fmt: str, name: str) -> None:
    """Deploy (or update, as a diff) stack NAME from compose files."""
    try:
        converted = build([Path(f) for f in files], name)
    except ComposeError as err:
        raise CLIError(str(err)) from None
    for warning in converted.warnings:
        click.echo(f"Warning: {warning}", err=True)
    req = converted.request
    req.prune, req.dry_run = prune, dry_run
    resp: api.DeployStackResponse = client().call("DeployStack", req)
    for warning in resp.warnings:
        click.echo(f"Warning: {warning}", err=True)
    changes = list(resp.changes)
    if fmt == "json":
        output.print_json({"stack": name, "dry_run": dry_run, "changes": _change_views(changes)})
        return
    _change_lines(changes, "would " if dry_run else "")
    if not any(c.action != "unchanged" for c in changes):
        click.echo(f"stack {name}: nothing to change")


@group.command("ls")
@quiet_option
@format_option
def stack_ls(quiet: bool, fmt: str) -> None:
    """List stacks (-q: their names)."""
    resp: api.ListStacksResponse = client().call("ListStacks", api.ListStacksRequest())
    views = [{"name": s.name, "services": int(s.services)} for s in resp.stacks]
    if quiet:
        for v in views:
            click.echo(v["name"])
    elif fmt == "json":
        output.print_json(views)
    else:
        output.print_table(["NAME", "SERVICES"], [[v["name"], v["services"]] for v in views])


def _services(name: str) -> list[listing.View]:
    """The stack's services (JSON views, read from the manager's HTTP socket)."""
    found = [v for v in rest().get("services") if v.get("stack") == name]
    if not found:
        raise CLIError(f"stack {name!r} not found (it has no services)")
    return found


@group.command("services")
@click.argument("name")
@quiet_option
@format_option
def stack_services(name: str, quiet: bool, fmt: str) -> None:
    """List the services of stack NAME."""
    listing.print_list(SERVICES, _services(name), quiet, fmt)


@group.command("ps")
@click.argument("name")
@quiet_option
@format_option
def stack_ps(name: str, quiet: bool, fmt: str) -> None:
    """List the tasks of stack NAME."""
    tasks: list[listing.View] = []
    for view in _services(name):
        tasks.extend(rest().get("tasks", service=view["id"]))
    listing.print_list(TASKS, tasks, quiet, fmt)


@group.command("rm")
@click.argument("name")
@format_option
def stack_rm(name: str, fmt: str) -> None:
    """Remove stack NAME: its services, networks, secrets and configs (one transaction)."""
    resp: api.RemoveStackResponse = client().call("RemoveStack", api.RemoveStackRequest(name=name))
    if fmt == "json":
        output.print_json({"stack": name, "changes": _change_views(list(resp.changes))})
    else:
        _change_lines(list(resp.changes))
