"""Objects as the web view's JSON: small, since a page may hold 10,000 tasks."""

from __future__ import annotations

from typing import Any

from shoal.manager.metrics import node_labels, task_state_name
from shoal.manager.store import Cache
from shoal.proto import objects_pb2 as pb

_HEALTH = {
    pb.HEALTH_NONE: "",
    pb.HEALTH_STARTING: "starting",
    pb.HEALTH_HEALTHY: "healthy",
    pb.HEALTH_UNHEALTHY: "unhealthy",
}


def task_view(t: pb.Task) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": t.id,
        "service": t.service_id,
        "name": f"{t.service_name}.{t.slot}" if t.slot else t.service_name,
        "node": t.node_id,
        "state": task_state_name(t.status.state),
        "desired": task_state_name(t.desired_state),
    }
    if t.status.err:
        view["err"] = t.status.err
    if t.status.health:
        view["health"] = _HEALTH[t.status.health]
    return view


def node_view(n: pb.Node, cache: Cache) -> dict[str, Any]:
    role, status, availability = node_labels(n, cache.managers())
    return {
        "id": n.id,
        "hostname": n.description.hostname or n.id[:12],
        "role": role,
        "status": status,
        "availability": availability,
        "cpus": n.description.resources.nano_cpus / 1e9,
        "memory": n.description.resources.memory_bytes,
        "leader": n.id == cache.leader_id(),
    }


def service_view(s: pb.Service, cache: Cache) -> dict[str, Any]:
    desired = running = healthy = updated = 0
    for t in cache.tasks_of_service(s.id):
        if t.desired_state != pb.RUNNING:
            continue
        desired += 1
        current = t.spec_version == s.spec_version
        if t.status.state == pb.RUNNING:
            running += 1
            ok = t.status.health in (pb.HEALTH_NONE, pb.HEALTH_HEALTHY)
            healthy += ok
            updated += ok and current
    update = s.update_status
    return {
        "id": s.id,
        "name": s.spec.annotations.name,
        "image": s.spec.task.container.image,
        "mode": s.spec.WhichOneof("mode") or "replicated",
        "desired": desired,
        "running": running,
        "healthy": healthy,
        # Rolling update: its state and how many replicas run the current spec.
        "update": {
            "state": pb.UpdateStatus.State.Name(update.state).lower() if update.state else "",
            "message": update.message,
            "updated": updated,
            "parallelism": int(s.spec.update.parallelism),
        },
    }
