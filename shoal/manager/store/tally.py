"""Per-service task figures kept as tasks change, so `service ls` and a watched
service's progress (`service create` waits on it) cost O(1) per change instead of
a walk over the service's tasks at every change: at 50,000 tasks that walk was
repeated for every batch of status reports."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from shoal.proto import objects_pb2 as pb

_FAILED = (pb.FAILED, pb.REJECTED)


def ready(t: pb.Task) -> bool:
    """Running, and healthy if it has a health check (a rolling update may move on)."""
    return t.status.state == pb.RUNNING and t.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)


@dataclass
class ServiceTally:
    # Tasks that should run, and how many of them do.
    desired: int = 0
    running: int = 0
    # Tasks that should run and are ready, by the spec version they run.
    ready: dict[int, dict[str, pb.Task]] = field(default_factory=lambda: defaultdict(dict))
    # Tasks whose error concerns the service (pending with a reason, or failed).
    errored: dict[str, pb.Task] = field(default_factory=dict)
    # Tasks waiting on an image pull that reports its progress.
    pulling: dict[str, pb.Task] = field(default_factory=dict)

    def add(self, t: pb.Task, delta: int) -> None:
        if t.desired_state == pb.RUNNING:
            self.desired += delta
            if t.status.state == pb.RUNNING:
                self.running += delta
                if ready(t):
                    _index(self.ready[t.spec_version], t, delta)
                    if not self.ready[t.spec_version]:
                        del self.ready[t.spec_version]
        if t.status.err and (t.desired_state == pb.RUNNING or t.status.state in _FAILED):
            _index(self.errored, t, delta)
        elif t.status.state == pb.PREPARING and t.status.message.startswith("pulling "):
            _index(self.pulling, t, delta)

    def empty(self) -> bool:
        return not (self.desired or self.errored or self.pulling or self.ready)


def _index(tasks: dict[str, pb.Task], t: pb.Task, delta: int) -> None:
    if delta > 0:
        tasks[t.id] = t
    else:
        tasks.pop(t.id, None)


class Tallies:
    """A ServiceTally per service id (an empty one for a service without tasks)."""

    def __init__(self) -> None:
        self._by_service: dict[str, ServiceTally] = {}

    def get(self, service_id: str) -> ServiceTally:
        return self._by_service.get(service_id) or ServiceTally()

    def put(self, t: pb.Task) -> None:
        tally = self._by_service.get(t.service_id)
        if tally is None:
            tally = self._by_service[t.service_id] = ServiceTally()
        tally.add(t, +1)

    def remove(self, t: pb.Task) -> None:
        tally = self._by_service.get(t.service_id)
        if tally is not None:
            tally.add(t, -1)
            if tally.empty():
                del self._by_service[t.service_id]
