"""Rebalancing: a settled replicated service is spread evenly again over the
nodes that may run it when one joins or comes back from down, drain or pause."""

from __future__ import annotations

from collections import defaultdict

from shoal.manager.orchestrator.plan import Plan, shut_down
from shoal.manager.orchestrator.tasks import eligible_nodes, is_current, new_task
from shoal.manager.orchestrator.update import updating
from shoal.manager.scheduler import is_live
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb


class Rebalancer:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def rebalances(self, service: pb.Service) -> bool:
        """Whether the service is rebalanced (by its spec or the cluster's default)."""
        if service.spec.WhichOneof("mode") == "global":
            return False
        return service.spec.rebalance or self.cache.cluster_spec().orchestration.rebalance

    def rebalance(self, service: pb.Service, by_slot: dict[int, list[pb.Task]], plan: Plan) -> None:
        """Tasks move from the fullest nodes to the emptiest, `update.parallelism` at a
        time, stop-first."""
        if updating(service):
            return
        live = [t for ts in by_slot.values() for t in ts if is_live(t)]
        if len(live) != service.spec.replicated.replicas or any(
            t.id in plan.touched or t.status.state != pb.RUNNING or not is_current(t, service)
            for t in live
        ):
            return  # something is starting, moving or updating: wait until it settles
        counts = dict.fromkeys(eligible_nodes(service, self.cache.list_objects(Kind.NODE)), 0)
        on_node: dict[str, list[pb.Task]] = defaultdict(list)
        for t in live:
            if t.node_id in counts:
                counts[t.node_id] += 1
                on_node[t.node_id].append(t)
        limit = service.spec.task.placement.max_replicas_per_node or len(live)
        parallelism = service.spec.update.parallelism or len(live)
        for _ in range(parallelism):
            if not on_node:
                return
            fullest = max(on_node, key=lambda n: (counts[n], n))
            emptiest = min(counts, key=lambda n: (counts[n], n))
            if counts[fullest] - counts[emptiest] <= 1 or counts[emptiest] >= limit:
                return
            moved = max(on_node[fullest], key=lambda t: t.slot)
            on_node[fullest].remove(moved)
            if not on_node[fullest]:
                del on_node[fullest]
            counts[fullest] -= 1
            counts[emptiest] += 1
            shut_down(moved, plan, "rebalancing")
            # Unassigned: the scheduler spreads it, which picks the emptiest node.
            plan.create(new_task(service, int(moved.slot)))
