"""Replicated services: one live task per slot 1..replicas."""

from __future__ import annotations

import functools
from collections import defaultdict

from shoal.manager.orchestrator.plan import Plan, shut_down
from shoal.manager.orchestrator.rebalance import Rebalancer
from shoal.manager.orchestrator.restart import Supervisor
from shoal.manager.orchestrator.tasks import new_task
from shoal.manager.orchestrator.update import Updater
from shoal.proto import objects_pb2 as pb


class ReplicatedOrchestrator:
    def __init__(self, supervisor: Supervisor, updater: Updater, rebalancer: Rebalancer) -> None:
        self.supervisor = supervisor
        self.updater = updater
        self.rebalancer = rebalancer

    def reconcile(self, service: pb.Service, tasks: list[pb.Task], plan: Plan) -> None:
        replicas = service.spec.replicated.replicas
        by_slot: dict[int, list[pb.Task]] = defaultdict(list)
        # Told to shut down, not stopped yet: what a held replacement waits for.
        stopping: dict[int, list[pb.Task]] = defaultdict(list)
        for t in tasks:
            if t.desired_state <= pb.RUNNING:
                by_slot[t.slot].append(t)
            elif t.status.state <= pb.RUNNING:
                stopping[t.slot].append(t)

        for slot, slot_tasks in by_slot.items():
            if slot > replicas:
                for t in slot_tasks:
                    shut_down(t, plan, "scaled down")
                continue
            self.supervisor.reconcile_slot(
                service,
                slot_tasks,
                plan,
                functools.partial(new_task, service, slot),
                stopping.get(slot, ()),
            )

        for slot in range(1, replicas + 1):
            if slot not in by_slot:
                plan.create(new_task(service, slot))

        self.updater.roll(service, by_slot, plan)
        if self.rebalancer.rebalances(service):
            self.rebalancer.rebalance(service, by_slot, plan)
