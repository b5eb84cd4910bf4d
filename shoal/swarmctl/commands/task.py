"""`swarmctl task ...`."""

from __future__ import annotations

from collections.abc import Sequence

import click

from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import listing, output
from shoal.swarmctl.session import client


def _views(tasks: Sequence[pb.Task]) -> list[listing.View]:
    names = listing.hostnames() if any(t.node_id for t in tasks) else {}
    return [output.task_view(t, names) for t in tasks]


def _rows(tasks: Sequence[pb.Task], views: Sequence[listing.View]) -> listing.Rows:
    # The views hold the hostnames already looked up.
    names = {v["node"]: v["node_hostname"] for v in views if v["node_hostname"] is not None}
    return output.task_rows(tasks, names)


TASKS = listing.Kind[pb.Task](
    ident=lambda t: t.id, views=_views, headers=output.TASK_HEADERS, rows=_rows
)


@click.group("task")
def group() -> None:
    """Inspect tasks."""


@group.command("ls")
@click.option("--service", "service_ref", default="", metavar="NAME|ID", help="Of this service.")
@click.option("--node", "node_ref", default="", metavar="NODE", help="On this node.")
@listing.quiet_option
@listing.format_option
def ls(service_ref: str, node_ref: str, quiet: bool, fmt: str) -> None:
    """List tasks."""
    listing.print_list(TASKS, client().list_tasks(service_ref, node_ref), quiet, fmt)


listing.add_inspect(
    group,
    TASKS,
    lambda ref: client().get_task(ref),
    "TASK",
    "Show a task (as JSON in both formats).",
)
