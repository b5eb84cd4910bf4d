"""How many tasks were healthy at every moment, from the tasks' own records.

A sampler that counts healthy tasks after each WatchService event misses a dip that
starts and ends between two events (the stream merges changes). The records carry
the times instead: an agent stamps every report (status.timestamp_ms), the report
that made a task healthy and the first one after it that did not say "running,
healthy". Seeing each task at least once while healthy and once after is enough;
when exactly the records were looked at does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from shoal.proto import objects_pb2 as pb


def now_ms() -> int:
    """The agents' clock (same host): wall time in ms."""
    return int(time.time() * 1000)


class Timeline:
    def __init__(self) -> None:
        self.since: dict[str, int] = {}  # task id -> healthy from (ms)
        self.until: dict[str, int] = {}  # task id -> no longer healthy from (ms)

    def observe(self, tasks: Iterable[pb.Task]) -> None:
        for t in tasks:
            s = t.status
            if s.state == pb.RUNNING and s.health == pb.HEALTH_HEALTHY:
                self.since.setdefault(t.id, s.timestamp_ms)
            elif t.id in self.since and s.timestamp_ms > self.since[t.id]:
                self.until.setdefault(t.id, s.timestamp_ms)

    def fewest(self, start_ms: int, end_ms: int) -> int:
        """The fewest tasks healthy at once between start and end (inclusive)."""
        count = 0
        events: list[tuple[int, int]] = []
        for task_id, since in self.since.items():
            until = self.until.get(task_id, end_ms + 1)
            if since <= start_ms < until:
                count += 1
            elif start_ms < since <= end_ms:
                events.append((since, +1))
            if start_ms < until <= end_ms:
                events.append((until, -1))
        fewest = count
        # At one instant, tasks that become healthy count before those that stop (a
        # handover within the same millisecond is not a dip).
        for _, delta in sorted(events, key=lambda e: (e[0], -e[1])):
            count += delta
            fewest = min(fewest, count)
        return fewest
