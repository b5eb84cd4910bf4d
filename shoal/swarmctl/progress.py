"""The progress bar `service create|update|scale` draw on a terminal while they wait:
tasks running of those wanted, and during a rolling update which batch it is at.
Drawn from a line of the manager's watch (views.progress_view)."""

from __future__ import annotations

from typing import Any

BAR_WIDTH = 24
_UPDATING = ("updating", "rollback_started")


def update_batch(progress: dict[str, Any]) -> tuple[int, int] | None:
    """(n, m): a rolling update is at batch n of m; None when no update runs."""
    want = int(progress["want"])
    if progress["update_status"]["state"] not in _UPDATING or want <= 0:
        return None
    per = int(progress["update_parallelism"]) or want  # 0: all at once
    batches = -(-want // per)
    done = min(int(progress["running_updated"]), want)
    return min(done // per + 1, batches), batches


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(name: str, progress: dict[str, Any], width: int) -> str:
    """`web [##########------] 3/5 running, update batch 2 of 3`, and the image pulls
    the agents report, cut to `width`."""
    want, running = int(progress["want"]), int(progress["running"])
    line = f"{name} {bar(min(running, want) if want else running, want)} {running}/{want} running"
    batch = update_batch(progress)
    pulls = progress["task_progress"]
    if batch is not None:
        updating = progress["update_status"]["state"] == "updating"
        verb = "update" if updating else "rollback"
        line += f", {verb} batch {batch[0]} of {batch[1]}"
    if pulls:
        line += "; " + pulls[0] + (f" (+{len(pulls) - 1} more)" if len(pulls) > 1 else "")
    return line[:width]
