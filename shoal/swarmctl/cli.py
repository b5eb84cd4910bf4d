"""`swarmctl`: the command line users script against (see CONTRACT.md).

Exit codes: 0 success; 1 the request failed, with one `Error: ...` line on
stderr; 2 usage error (click's own). `--format json` output is the stable
contract; tables and progress lines are for people.

This module only assembles the command groups (shoal/swarmctl/commands/);
flags become specs in spec.py, `ls`/`inspect` print through listing.py, and
the commands that wait for a service use wait.py.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from shoal.swarmctl.errors import CLIError, one_line
from shoal.swarmctl.session import Session, resolve_socket

# Command groups by name, each a module defining `group` (`events` is a single
# command); imported when used.
GROUPS = {
    "cluster": "shoal.swarmctl.commands.cluster",
    "config": "shoal.swarmctl.commands.config",
    "events": "shoal.swarmctl.commands.events",
    "network": "shoal.swarmctl.commands.network",
    "node": "shoal.swarmctl.commands.node",
    "secret": "shoal.swarmctl.commands.secret",
    "service": "shoal.swarmctl.commands.service",
    "stack": "shoal.swarmctl.commands.stack",
    "task": "shoal.swarmctl.commands.task",
}

# What `swarmctl --help` lists: the groups' own first help lines, kept here so the
# root help loads no group (and with them gRPC and protobuf). tests/test_cli.py
# checks that they match.
SUMMARIES = {
    "cluster": "The cluster itself.",
    "config": "Manage configs (the data is never shown).",
    "events": "Print the cluster's changes as they happen (Ctrl-C stops).",
    "network": "Manage overlay networks.",
    "node": "Manage nodes.",
    "secret": "Manage secrets (the data is never shown).",
    "service": "Manage services.",
    "stack": "Deploy and manage stacks (apps from compose files).",
    "task": "Inspect tasks.",
}

# Writes with a light group of their own (commands/light.py).
LIGHT_WRITES = {("service", "scale"), ("service", "rm")}


class Root(click.Group):
    """Loads a command group only when it runs, and turns failed requests and bad
    flag values into one line on stderr and exit 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(GROUPS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(sorted(SUMMARIES.items()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = GROUPS.get(cmd_name)
        if module is None:
            return None
        group: click.Command = importlib.import_module(module).group
        return group

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # A read command runs from its light group: no protobuf or gRPC to load;
        # so do `service scale` and `service rm`, without the spec flags.
        if len(args) > 1:
            if (args[0], args[1]) in LIGHT_WRITES:
                from shoal.swarmctl.commands import light as module
            else:
                from shoal.swarmctl.commands import reads as module  # type: ignore[no-redef]

            light = module.GROUPS.get(args[0])
            if light is not None and args[1] in light.commands:
                return args[0], light, args[1:]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CLIError, ValueError) as err:
            raise click.ClickException(one_line(str(err))) from None


@click.group(cls=Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", metavar="PATH", help="The manager's control socket [env SWARM_SOCKET].")
@click.pass_context
def cli(ctx: click.Context, socket: str | None) -> None:
    """Control a Shoal cluster."""
    session = Session(resolve_socket(socket))
    ctx.obj = session
    ctx.call_on_close(session.close)


def main() -> None:
    try:
        cli.main(prog_name="swarmctl")
    except Exception as err:  # a bug: still one line and exit 1, never a traceback
        click.echo(f"Error: unexpected {type(err).__name__}: {one_line(str(err))}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
