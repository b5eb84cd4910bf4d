"""The one path every `ls` and `inspect` takes: `-q`, `--format json` and tables.

- `ls -q` prints IDs only, one a line (it wins over `--format`);
- `ls --format json` prints a JSON array of views, `ls` a table;
- `inspect` prints one JSON object whatever `--format` says (scripts rely on it).

A command group describes its objects once as a `Kind` and gets its `ls` and
`inspect` from `add_ls` / `add_inspect` (or calls `print_list` when its list
takes filters, like `task ls` and `service ps`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import click

from shoal.swarmctl import output
from shoal.swarmctl.session import client

T = TypeVar("T")
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


@dataclasses.dataclass(frozen=True)
class Kind(Generic[T]):
    """How one kind of object is listed and shown."""

    ident: Callable[[T], str]
    # The JSON views of some objects; looks up what they refer to once for all.
    views: Callable[[Sequence[T]], list[View]]
    headers: Sequence[str]
    rows: Callable[[Sequence[T], Sequence[View]], Rows]


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


H = TypeVar("H", bound=_HasId)


def simple_kind(
    view: Callable[[H], View], headers: Sequence[str], rows: Callable[[Sequence[View]], Rows]
) -> Kind[H]:
    """A kind whose objects carry their `id`, whose views need no lookups and whose
    table rows come from the views alone (nodes, networks)."""
    return Kind(
        ident=lambda item: item.id,
        views=lambda items: [view(item) for item in items],
        headers=headers,
        rows=lambda _, views: rows(views),
    )


def print_list(kind: Kind[T], items: Sequence[T], quiet: bool, fmt: str) -> None:
    if quiet:
        for item in items:
            click.echo(kind.ident(item))
        return
    views = kind.views(items)
    if fmt == "json":
        output.print_json(views)
    else:
        output.print_table(kind.headers, kind.rows(items, views))


def print_one(view: View, fmt: str) -> None:
    """`inspect`: JSON in both formats; `--format` is taken so every command has it."""
    del fmt
    output.print_json(view)


def add_ls(group: click.Group, kind: Kind[T], fetch: Callable[[], Sequence[T]], help: str) -> None:
    """`group ls [-q] [--format json]`."""

    @group.command("ls", help=help)
    @quiet_option
    @format_option
    def ls(quiet: bool, fmt: str) -> None:
        print_list(kind, fetch(), quiet, fmt)


def add_inspect(
    group: click.Group, kind: Kind[T], get: Callable[[str], T], metavar: str, help: str
) -> None:
    """`group inspect REF [--format json]`."""

    @group.command("inspect", help=help)
    @click.argument("ref", metavar=metavar)
    @format_option
    def inspect(ref: str, fmt: str) -> None:
        print_one(kind.views([get(ref)])[0], fmt)


# ------------------------------------------------------------ names views show


def network_names() -> dict[str, str]:
    return {n.id: n.spec.annotations.name for n in client().list_networks()}


def hostnames() -> dict[str, str]:
    return {n.id: n.description.hostname for n in client().list_nodes()}
