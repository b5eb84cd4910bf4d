"""The one path every `ls` and `inspect` takes: `-q`, `--format json` and tables.

- `ls -q` prints IDs only, one a line (it wins over `--format`);
- `ls --format json` prints a JSON array of views, `ls` a table;
- `inspect` prints one JSON object whatever `--format` says (scripts rely on it).

Reads go over the manager's HTTP socket (session.rest), which answers with the
views themselves (shoal/views.py): nothing here loads gRPC or protobuf. A command
group describes its objects once as a `Kind` and gets its `ls` and `inspect` from
`ls_command` / `inspect_command` (or calls `print_list` when its list takes
filters, like `task ls` and `service ps`); they live in commands/reads.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import click

from shoal.swarmctl import output
from shoal.swarmctl.session import rest

View = dict[str, Any]
Rows = list[list[str]]

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format; json is the stable one.",
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Print IDs only.")


class Kind(NamedTuple):
    """How one kind of object is read and listed."""

    # Its collection on the manager's HTTP socket: /services, /services/REF.
    path: str
    headers: Sequence[str]
    rows: Callable[[Sequence[View]], Rows]


def print_list(kind: Kind, views: Sequence[View], quiet: bool, fmt: str) -> None:
    if quiet:
        for view in views:
            click.echo(view["id"])
    elif fmt == "json":
        output.print_json(list(views))
    else:
        output.print_table(kind.headers, kind.rows(views))


def print_one(view: View, fmt: str) -> None:
    """`inspect`: JSON in both formats; `--format` is taken so every command has it."""
    del fmt
    output.print_json(view)


def ls_command(kind: Kind, help: str) -> click.Command:
    """`ls [-q] [--format json]`."""

    @click.command("ls", help=help)
    @quiet_option
    @format_option
    def ls(quiet: bool, fmt: str) -> None:
        print_list(kind, rest().get(kind.path), quiet, fmt)

    return ls


def inspect_command(kind: Kind, metavar: str, help: str) -> click.Command:
    """`inspect REF [--format json]`."""

    @click.command("inspect", help=help)
    @click.argument("ref", metavar=metavar)
    @format_option
    def inspect(ref: str, fmt: str) -> None:
        print_one(rest().get(kind.path, ref), fmt)

    return inspect
