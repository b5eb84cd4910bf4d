"""`swarmctl node ...`."""

from __future__ import annotations

import click

from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import objspecs as specs
from shoal.swarmctl import parse
from shoal.swarmctl.commands import reads
from shoal.swarmctl.session import client, remove_each, retry_conflicts


@click.group("node")
def group() -> None:
    """Manage nodes."""


reads.add_to(group)


@group.command("update")
@click.argument("ref", metavar="NODE")
@click.option("--availability", type=click.Choice(list(parse.AVAILABILITY)))
@click.option("--label-add", multiple=True, metavar="K=V", help="Add or change a label.")
@click.option("--label-rm", multiple=True, metavar="K", help="Remove a label.")
def update(
    ref: str, availability: str | None, label_add: tuple[str, ...], label_rm: tuple[str, ...]
) -> None:
    """Change a node's availability or labels."""
    if availability is None and not label_add and not label_rm:
        raise click.UsageError("nothing to change: give --availability, --label-add or --label-rm")
    labels = [parse.key_value(item, "label") for item in label_add]

    def attempt() -> pb.Node:
        current = client().get_node(ref)
        spec = specs.node_spec(current.spec, availability, labels, label_rm)
        return client().update_node(current.id, current.meta.version, spec)

    click.echo(retry_conflicts(attempt).id)


@group.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@click.option("--force", is_flag=True, help="Remove even a node that is up.")
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove nodes from the cluster; their tasks are rescheduled."""
    remove_each(ctx, refs, lambda ref: client().remove_node(ref, force))
