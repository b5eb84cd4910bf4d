"""`swarmctl task ...`: reads only (commands/reads.py)."""

from __future__ import annotations

import click

from shoal.swarmctl.commands import reads


@click.group("task")
def group() -> None:
    """Inspect tasks."""


reads.add_to(group)
