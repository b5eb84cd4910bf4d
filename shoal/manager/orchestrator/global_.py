"""Global services: one live task on every eligible node."""

from __future__ import annotations

import functools
from collections import defaultdict

from shoal.manager.orchestrator.plan import Plan, shut_down
from shoal.manager.orchestrator.restart import Supervisor
from shoal.manager.orchestrator.tasks import eligible_nodes, is_current, new_task, node_usable
from shoal.manager.scheduler import is_live
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb


class GlobalOrchestrator:
    def __init__(self, cache: Cache, supervisor: Supervisor) -> None:
        self.cache = cache
        self.supervisor = supervisor

    def reconcile(self, service: pb.Service, tasks: list[pb.Task], plan: Plan) -> None:
        eligible = set(eligible_nodes(service, self.cache.list_objects(Kind.NODE)))
        on_node: dict[str, list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.desired_state <= pb.RUNNING:
                on_node[t.node_id].append(t)
        for node_id, node_tasks in on_node.items():
            node: pb.Node | None = self.cache.get(Kind.NODE, node_id)
            # A paused node keeps what it runs; drained, down or ineligible ones do not.
            keeps = node is not None and node.spec.availability == pb.AVAILABILITY_PAUSE
            if not node_usable(node) or (node_id not in eligible and not keeps):
                for t in node_tasks:
                    shut_down(t, plan, "node no longer eligible")
                continue
            self.supervisor.reconcile_slot(
                service, node_tasks, plan, functools.partial(new_task, service, 0, node_id)
            )
            # Global updates replace every outdated task at once, stop-first.
            for t in node_tasks:
                if t.id not in plan.touched and is_live(t) and not is_current(t, service):
                    shut_down(t, plan, "updating to a new spec")
                    plan.create(new_task(service, 0, node_id))
        for node_id in eligible - on_node.keys():
            plan.create(new_task(service, 0, node_id))
