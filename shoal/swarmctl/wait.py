"""Waiting for a service to converge after `service create|update|scale`.

Follows the service (no polling) over the manager's HTTP socket, GET
/services/REF/watch: a line per change, the progress view of WatchService's
messages (views.progress_view), until every task it wants runs from its current
spec; fails with the reason when time runs out or the manager paused (or rolled
back) the update. Progress goes to stderr on a terminal.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.swarmctl.errors import CLIError
from shoal.swarmctl.progress import progress_line
from shoal.swarmctl.session import rest

F = TypeVar("F", bound=Callable[..., Any])
# A line of the watch (views.progress_view).
Progress = dict[str, Any]

_UPDATE_PAUSED = ("paused", "rollback_paused")
_ROLLED_BACK = ("rollback_started", "rollback_completed")


def wait_options(fn: F) -> F:
    """`--detach` and `--timeout` of the commands that wait."""
    fn = click.option(
        "--timeout",
        default="60s",
        show_default=True,
        help="How long to wait for the service to converge.",
    )(fn)
    fn = click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait.")(fn)
    return fn


def converged(progress: Progress) -> bool:
    """Every task the service wants runs, made from its current spec."""
    n = progress["want"]
    if n == 0 and progress["mode"] == "global":
        return False  # the orchestrator has not placed the global tasks yet
    return bool(
        progress["desired"] == n and progress["running"] == n and progress["running_updated"] == n
    )


def status_line(progress: Progress | None) -> str:
    if progress is None or progress["removed"]:
        return ""
    line = f"{progress['running']}/{progress['want']} running"
    if progress["task_errors"]:
        line += f"; {progress['task_errors'][0]}"
    return line


def _show(name: str, progress: Progress) -> None:
    """One progress bar line per service, rewritten in place."""
    width = shutil.get_terminal_size().columns - 1
    line = progress_line(name, progress, width)
    sys.stderr.write(f"\r{line}\x1b[K")
    sys.stderr.flush()


def _stopped(update: dict[str, Any], started_ms: int, rollback_asked: bool) -> bool:
    """The manager paused or reverted the update this command started."""
    stopped = update["state"] in _UPDATE_PAUSED or (
        update["state"] in _ROLLED_BACK and not rollback_asked
    )
    return stopped and int(update["started_at_ms"]) >= started_ms


def wait_converged(
    ref: str,
    name: str,
    timeout_ms: int,
    deadline: float | None = None,
    rollback_asked: bool = False,
) -> None:
    """Follows the service until it converges; CLIError when time is up, or when the
    manager paused the update (or rolled it back)."""
    end = deadline if deadline is not None else time.monotonic() + timeout_ms / 1000
    started_ms = int(time.time() * 1000) - 1000
    tty = sys.stderr.isatty()
    last: Progress | None = None
    try:
        # At least a moment, so a shared deadline that ran out still shows where it stands.
        timeout_s = max(end - time.monotonic(), 1.0)
        for progress in rest().stream("services", ref, "watch", timeout_s=timeout_s):
            if progress["removed"]:
                raise CLIError(f"service {name} was removed while waiting for it to converge")
            last = progress
            if tty:
                _show(name, progress)
            update = progress["update_status"]
            if _stopped(update, started_ms, rollback_asked):
                # The manager stopped or reverted this update: say so, and why.
                raise CLIError(f"service {name}: {update['message'] or 'update failed'}")
            if converged(progress):
                return
    finally:
        if tty and last is not None:
            sys.stderr.write("\n")
    status = status_line(last)
    raise CLIError(
        f"service {name} did not converge within {timeout_ms / 1000:g}s"
        + (f": {status}" if status else "")
    )
