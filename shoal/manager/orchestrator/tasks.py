"""Task predicates and task construction, shared by every orchestrator part."""

from __future__ import annotations

from collections.abc import Iterable

from shoal.clock import now_ms
from shoal.manager import constraints
from shoal.manager.ids import new_id
from shoal.manager.store.tally import ready
from shoal.proto import objects_pb2 as pb

# Task states in which nothing runs on a node yet: such a task can simply be deleted.
NOT_STARTED = pb.ASSIGNED


def new_task(service: pb.Service, slot: int, node_id: str = "") -> pb.Task:
    t = pb.Task(
        id=new_id(),
        service_id=service.id,
        service_name=service.spec.annotations.name,
        slot=slot,
        node_id=node_id,
        desired_state=pb.RUNNING,
        spec_version=service.spec_version,
    )
    t.spec.CopyFrom(task_spec_of(service))
    t.status.timestamp_ms = now_ms()
    if t.spec.networks:
        t.status.state = pb.NEW
        t.status.message = "allocating"
    elif node_id:
        t.status.state = pb.ASSIGNED
        t.status.message = "scheduled"
    else:
        t.status.state = pb.PENDING
        t.status.message = "pending task scheduling"
    return t


def task_spec_of(service: pb.Service) -> pb.TaskSpec:
    """What a new task of the service runs: its task spec, the image pinned."""
    if not service.pinned_image:
        return service.spec.task
    spec = pb.TaskSpec()
    spec.CopyFrom(service.spec.task)
    spec.container.image = service.pinned_image
    return spec


def is_current(t: pb.Task, service: pb.Service) -> bool:
    """True if the task runs the service's current task spec. A rollback makes a new
    spec_version whose spec equals an older one; tasks of that older spec stay."""
    return t.spec_version == service.spec_version or t.spec == task_spec_of(service)


def ready_for_update(t: pb.Task) -> bool:
    """Running, and healthy if it has a health check: a rolling update may move on."""
    return ready(t)


def without_addresses(t: pb.Task) -> None:
    """Frees a dead task's overlay addresses (its claims go with them)."""
    for a in t.networks:
        del a.addresses[:]


def node_usable(node: pb.Node | None) -> bool:
    """Whether a node may keep running its tasks (drain and down move them)."""
    return (
        node is not None
        and node.status.state == pb.NODE_READY
        and node.spec.availability != pb.AVAILABILITY_DRAIN
    )


def eligible_nodes(service: pb.Service, nodes: Iterable[pb.Node]) -> list[str]:
    """Ids of the nodes that may take new tasks of the service: ready, active, and
    matching its placement constraints."""
    wanted = constraints.parse_all(list(service.spec.task.placement.constraints))
    return [
        n.id
        for n in nodes
        if n.status.state == pb.NODE_READY
        and n.spec.availability == pb.AVAILABILITY_ACTIVE
        and all(c.matches(n) for c in wanted)
    ]
