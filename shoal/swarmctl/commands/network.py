"""`swarmctl network ...`."""

from __future__ import annotations

import click

from shoal.swarmctl import objspecs as specs
from shoal.swarmctl.commands import reads
from shoal.swarmctl.session import client, remove_each


@click.group("network")
def group() -> None:
    """Manage overlay networks."""


@group.command("create")
@click.argument("name")
@click.option("--driver", default="overlay", show_default=True, help="Network driver.")
@click.option("--subnet", default="", metavar="CIDR", help="Picked from the pool if not given.")
@click.option("--label", multiple=True, metavar="K=V", help="Network label.")
@click.option("--internal", is_flag=True, help="No egress: tasks reach nothing outside.")
def create(name: str, driver: str, subnet: str, label: tuple[str, ...], internal: bool) -> None:
    """Create an overlay network."""
    spec = specs.network_spec(name, driver, subnet, label, internal)
    click.echo(client().create_network(spec).id)


reads.add_to(group)


@group.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Remove networks that no service uses."""
    remove_each(ctx, refs, client().remove_network)
