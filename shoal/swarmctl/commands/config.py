"""`swarmctl config ...`: the secret commands for configs (never printing the data)."""

from __future__ import annotations

from shoal.swarmctl.commands.secret import make_group

group = make_group("config")
