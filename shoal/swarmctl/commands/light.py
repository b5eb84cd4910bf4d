"""`service scale` and `service rm`: service writes as light as the reads.

They need none of the flags-to-spec machinery (spec.py: some 45 click options and
the flag parsers), so the root group (cli.py) runs them from the light groups in
`GROUPS` without importing the `service` group module, as it runs the reads from
reads.py; the full group adds the same commands, so its help lists them. Both go
over the manager's HTTP socket (no gRPC, no protobuf).
"""

from __future__ import annotations

import time

import click

from shoal.swarmctl import parse
from shoal.swarmctl.errors import CLIError
from shoal.swarmctl.session import remove_each, report, rest, retry_conflicts
from shoal.swarmctl.wait import wait_converged, wait_options


def _scale_one(name: str, count: int) -> str:
    # The manager reads the spec and writes it back with `count` in one request.
    body = {"replicas": count}
    scaled = retry_conflicts(lambda: rest().post("services", name, "scale", body=body))
    return str(scaled["id"])


@click.command("scale")
@click.argument("pairs", nargs=-1, required=True, metavar="NAME=REPLICAS...")
@wait_options
@click.pass_context
def scale(ctx: click.Context, pairs: tuple[str, ...], detach: bool, timeout: str) -> None:
    """Set the replicas of services: swarmctl service scale web=5 [db=2 ...]"""
    try:
        wanted = [parse.scale_pair(p) for p in pairs]
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    timeout_ms = parse.duration_ms(timeout)
    for _, count in wanted:
        parse.check_replicas(count)
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



@click.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove services; their tasks are stopped."""
    remove_each(ctx, refs, lambda ref: str(rest().delete("services", ref)["id"]))


# The light commands by group name.
GROUPS = {"service": click.Group("service", commands=[scale, rm])}


def add_to(group: click.Group) -> None:
    """Gives a full group its light commands."""
    for command in GROUPS[str(group.name)].commands.values():
        group.add_command(command)
