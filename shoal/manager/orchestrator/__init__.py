"""Orchestrators: from each service's desired state to the set of tasks it needs.

Replicated services get one live task per slot 1..replicas; global services get
one live task per eligible node. Decisions are made from the cache alone and
come back as store operations, so running a pass twice, or after a restart
half-way through, converges to the same tasks.

The parts, as in SwarmKit: replicated.py and global_.py decide which tasks a
service needs; restart.py keeps each slot at one live task (restart policy);
update.py rolls tasks to a new spec (and back); rebalance.py spreads settled
services again; reaper.py removes what is no longer needed; tasks.py holds the
task predicates they share, plan.py what a pass decides.
"""

from __future__ import annotations

from shoal.manager.orchestrator.global_ import GlobalOrchestrator
from shoal.manager.orchestrator.plan import Plan
from shoal.manager.orchestrator.reaper import TaskReaper
from shoal.manager.orchestrator.rebalance import Rebalancer
from shoal.manager.orchestrator.replicated import ReplicatedOrchestrator
from shoal.manager.orchestrator.restart import Supervisor
from shoal.manager.orchestrator.update import Updater
from shoal.manager.store import Cache, Kind
from shoal.proto import objects_pb2 as pb

__all__ = ["Orchestrator", "Plan"]


class Orchestrator:
    """Routes each service to the orchestrator of its mode, then reaps its history."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        supervisor = Supervisor(cache)
        self.rebalancer = Rebalancer(cache)
        self.replicated = ReplicatedOrchestrator(supervisor, Updater(cache), self.rebalancer)
        self.global_ = GlobalOrchestrator(cache, supervisor)
        self.reaper = TaskReaper(cache)

    def reconcile(self, service_ids: set[str], plan: Plan) -> None:
        for service_id in service_ids:
            service: pb.Service | None = self.cache.get(Kind.SERVICE, service_id)
            tasks = self.cache.tasks_of_service(service_id)
            if service is None:
                self.reaper.remove_tasks(tasks, plan)
                continue
            if service.spec.WhichOneof("mode") == "global":
                self.global_.reconcile(service, tasks, plan)
            else:
                self.replicated.reconcile(service, tasks, plan)
            self.reaper.reap_history(tasks, plan)

    def rebalances(self, service: pb.Service) -> bool:
        """Whether node changes concern the service (the reconciler's dirty marking)."""
        return self.rebalancer.rebalances(service)
