"""The daemons' command lines, read from the systemd units Shoal ships (shoal/systemd/).

The lab starts every manager and agent with the ExecStart line of its unit, expanded the
way systemd expands it: `${VAR}` is one argument, a bare `$VAR` word splits on
whitespace. Only the binary differs: this interpreter runs `-m shoal.daemon`, so the
lab runs the code of the checkout it was started from.
"""

from __future__ import annotations

import re
import shlex
import sys
from importlib import resources

_ONE = re.compile(r"\$\{(\w+)\}")
_SPLIT = re.compile(r"\$(\w+)")


def unit_text(name: str) -> str:
    """The unit file's text: `manager` or `worker`."""
    return resources.files("shoal").joinpath(f"systemd/shoal-{name}.service").read_text()


def _directives(text: str, key: str) -> list[str]:
    prefix = key + "="
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


def command_line(name: str, env: dict[str, str]) -> list[str]:
    """The unit's ExecStart as argv, with its Environment= defaults overridden by env."""
    text = unit_text(name)
    values: dict[str, str] = {}
    for line in _directives(text, "Environment"):
        for pair in shlex.split(line):
            key, _, value = pair.partition("=")
            values[key] = value
    values.update(env)
    (exec_start,) = _directives(text, "ExecStart")
    words = shlex.split(exec_start)
    argv = [sys.executable, "-m", "shoal.daemon"]
    for word in words[1:]:
        split = _SPLIT.fullmatch(word)
        if split:
            argv += values.get(split[1], "").split()
        else:
            argv.append(_ONE.sub(lambda m: values.get(m[1], ""), word))
    return argv
