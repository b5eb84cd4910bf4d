"""`depends_on: condition: service_healthy` for a stack's first deploy.

A service whose spec names services in depends_on_healthy gets no tasks until
each of those has a running task that is healthy (or running, without a health
check). Only the first tasks wait: once a service has tasks, it is never held
back again (a dependency's later trouble does not stop a running app).
"""

from __future__ import annotations

from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb

# How soon a held service is looked at again (the leader's wakeup timer).
RECHECK_MS = 500


def _ready(t: pb.Task) -> bool:
    return (
        t.desired_state == pb.RUNNING
        and t.status.state == pb.RUNNING
        and t.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)
    )


def waiting_on(cache: Cache, service: pb.Service, tasks: list[pb.Task]) -> list[str]:
    """Names of the dependencies the service's first tasks still wait for."""
    if not service.spec.depends_on_healthy or tasks:
        return []
    waiting = []
    for dep_id in service.spec.depends_on_healthy:
        dep: pb.Service | None = cache.get(Kind.SERVICE, dep_id)
        if dep is None:
            continue  # gone: nothing to wait for
        if not any(_ready(t) for t in cache.tasks_of_service(dep_id)):
            waiting.append(dep.spec.annotations.name)
    return waiting
