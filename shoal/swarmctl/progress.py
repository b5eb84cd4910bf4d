"""The progress bar `service create|update|scale` draw on a terminal while they wait:
tasks running of those wanted, and during a rolling update which batch it is at."""

from __future__ import annotations

from collections.abc import Sequence

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

BAR_WIDTH = 24
_UPDATING = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)


def update_batch(info: api.ServiceInfo, want: int) -> tuple[int, int] | None:
    """(n, m): a rolling update is at batch n of m; None when no update runs."""
    svc = info.service
    if svc.update_status.state not in _UPDATING or want <= 0:
        return None
    per = int(svc.spec.update.parallelism) or want  # 0: all at once
    batches = -(-want // per)
    done = min(int(info.running_updated), want)
    return min(done // per + 1, batches), batches


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = width if total <= 0 else min(width, done * width // total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(
    name: str, info: api.ServiceInfo, want: int, width: int, pulls: Sequence[str] = ()
) -> str:
    """`web [##########------] 3/5 running, update batch 2 of 3`, and the image pulls
    the agents report, cut to `width`."""
    running = min(int(info.running), want) if want else int(info.running)
    line = f"{name} {bar(running, want)} {int(info.running)}/{want} running"
    batch = update_batch(info, want)
    if batch is not None:
        updating = info.service.update_status.state == pb.UpdateStatus.UPDATING
        verb = "update" if updating else "rollback"
        line += f", {verb} batch {batch[0]} of {batch[1]}"
    if pulls:
        line += "; " + pulls[0] + (f" (+{len(pulls) - 1} more)" if len(pulls) > 1 else "")
    return line[:width]
