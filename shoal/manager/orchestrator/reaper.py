"""Task reaping: the tasks of a removed service, and dead tasks beyond the
cluster's task history limit."""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.orchestrator.plan import Plan
from shoal.manager.orchestrator.tasks import NOT_STARTED, without_addresses
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb


class TaskReaper:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def remove_tasks(self, tasks: list[pb.Task], plan: Plan) -> None:
        """The service is gone: stop what runs, delete what does not."""
        for t in tasks:
            if t.id in plan.touched:
                continue
            finished = t.status.state > pb.RUNNING or t.status.state < NOT_STARTED
            if finished or not self._node_alive(t):
                plan.delete(t)
            elif t.desired_state != pb.REMOVE:
                updated = pb.Task()
                updated.CopyFrom(t)
                updated.desired_state = pb.REMOVE
                updated.status.message = "service removed"
                plan.update(updated, t)

    def reap_history(self, tasks: list[pb.Task], plan: Plan) -> None:
        """Keeps the newest `task_history_limit` dead tasks per slot (per node for global)."""
        limit = self._history_limit()
        dead: dict[tuple[int, str], list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.id in plan.touched or t.desired_state <= pb.RUNNING:
                continue
            if t.status.state > pb.RUNNING or not self._node_alive(t):
                dead[(int(t.slot), t.node_id if t.slot == 0 else "")].append(t)
        for group in dead.values():
            group.sort(key=lambda t: t.meta.updated_at_ms, reverse=True)
            for t in group[limit:]:
                plan.delete(t)
            for t in group[:limit]:
                if t.status.state > pb.RUNNING and any(a.addresses for a in t.networks):
                    freed = pb.Task()
                    freed.CopyFrom(t)
                    without_addresses(freed)
                    plan.update(freed, t)

    def _node_alive(self, t: pb.Task) -> bool:
        node: pb.Node | None = self.cache.get(Kind.NODE, t.node_id) if t.node_id else None
        return node is not None and node.status.state == pb.NODE_READY

    def _history_limit(self) -> int:
        return int(self.cache.cluster_spec().orchestration.task_history_limit)
