"""The scheduler: picks a node for every task that wants to run and has none.

Filters (in order): node ready, availability active, placement constraints,
max replicas per node, resources. Among the nodes left it spreads a service's
tasks (fewest tasks of this service first), ties broken by the node's total
task count. A task no node fits stays pending with the reason on the task:
`no suitable node: 2 nodes not ready, 1 node does not satisfy node.labels.x==y`.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.clock import now_ms
from shoal.manager import constraints
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb

_AVAILABILITY = {pb.AVAILABILITY_PAUSE: "paused", pb.AVAILABILITY_DRAIN: "drained"}


def is_live(task: pb.Task) -> bool:
    """A task that holds (or will hold) a place on its node."""
    return task.desired_state <= pb.RUNNING and task.status.state <= pb.RUNNING


@dataclass
class _NodeLoad:
    node: pb.Node
    total: int = 0
    cpus: int = 0
    memory: int = 0
    per_service: Counter[str] = field(default_factory=Counter)


class Scheduler:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def _loads(self) -> dict[str, _NodeLoad]:
        loads: dict[str, _NodeLoad] = {}
        for node in self.cache.list_objects(Kind.NODE):
            if node.role == pb.ROLE_MANAGER:
                continue  # a manager runs no agent: it is no place for tasks, nor a reason
            load = _NodeLoad(node)
            for t in self.cache.tasks_of_node(node.id):
                if is_live(t):
                    load.total += 1
                    load.per_service[t.service_id] += 1
                    load.cpus += t.spec.reservations.nano_cpus
                    load.memory += t.spec.reservations.memory_bytes
            loads[node.id] = load
        return loads

    def schedule(self, tasks: Iterable[pb.Task]) -> tuple[list[pb.Task], list[pb.Task]]:
        """Assigns nodes to tasks in place; returns (assigned, left pending with a new reason)."""
        by_service: dict[str, list[pb.Task]] = defaultdict(list)
        for t in tasks:
            by_service[t.service_id].append(t)
        if not by_service:
            return [], []
        loads = self._loads()
        assigned: list[pb.Task] = []
        changed_reason: list[pb.Task] = []
        stamp = now_ms()
        for service_id, group in by_service.items():
            group.sort(key=lambda t: t.slot)
            # Tasks of one service share their spec, so one filter pass serves all.
            spec = group[0].spec
            fits, reason = self._filter(spec, loads.values(), service_id)
            heap = [(ld.per_service[service_id], ld.total, ld.node.id) for ld in fits]
            heapq.heapify(heap)
            for t in group:
                placed = False
                while heap:
                    _, _, node_id = heapq.heappop(heap)
                    load = loads[node_id]
                    if not self._room(load, t.spec, service_id):
                        continue  # full for this service now: drop it from the heap
                    self._place(t, load, service_id, stamp)
                    heapq.heappush(heap, (load.per_service[service_id], load.total, node_id))
                    assigned.append(t)
                    placed = True
                    break
                if placed:
                    continue
                err = f"no suitable node: {reason or 'every fitting node is full'}"
                if t.status.err != err:
                    t.status.err = err
                    t.status.message = "pending task scheduling"
                    t.status.timestamp_ms = stamp
                    changed_reason.append(t)
        return assigned, changed_reason

    @staticmethod
    def _place(t: pb.Task, load: _NodeLoad, service_id: str, stamp: int) -> None:
        t.node_id = load.node.id
        t.status.state = pb.ASSIGNED
        t.status.message = "scheduled"
        t.status.err = ""
        t.status.timestamp_ms = stamp
        load.total += 1
        load.per_service[service_id] += 1
        load.cpus += t.spec.reservations.nano_cpus
        load.memory += t.spec.reservations.memory_bytes

    @staticmethod
    def _room(load: _NodeLoad, spec: pb.TaskSpec, service_id: str) -> bool:
        limit = spec.placement.max_replicas_per_node
        if limit and load.per_service[service_id] >= limit:
            return False
        res = load.node.description.resources
        want = spec.reservations
        if want.nano_cpus and res.nano_cpus and load.cpus + want.nano_cpus > res.nano_cpus:
            return False
        return not (
            want.memory_bytes
            and res.memory_bytes
            and load.memory + want.memory_bytes > res.memory_bytes
        )

    def _filter(
        self, spec: pb.TaskSpec, loads: Iterable[_NodeLoad], service_id: str
    ) -> tuple[list[_NodeLoad], str]:
        """Nodes that can take a task of this spec, and why the others cannot."""
        wanted = constraints.parse_all(list(spec.placement.constraints))
        fits: list[_NodeLoad] = []
        rejected: Counter[str] = Counter()
        total = 0
        for load in loads:
            total += 1
            node = load.node
            if node.status.state != pb.NODE_READY:
                rejected["not ready"] += 1
                continue
            if node.spec.availability != pb.AVAILABILITY_ACTIVE:
                rejected[_AVAILABILITY[node.spec.availability]] += 1
                continue
            failed = next((c for c in wanted if not c.matches(node)), None)
            if failed is not None:
                rejected[f"not satisfying {failed}"] += 1
                continue
            if not self._room(load, spec, service_id):
                limit = spec.placement.max_replicas_per_node
                if limit and load.per_service[service_id] >= limit:
                    rejected[f"at max replicas per node ({limit})"] += 1
                else:
                    rejected["without enough free resources"] += 1
                continue
            fits.append(load)
        if total == 0:
            return fits, "no nodes in the cluster"
        parts = [f"{n} node{'s' if n != 1 else ''} {why}" for why, n in sorted(rejected.items())]
        return fits, ", ".join(parts)
