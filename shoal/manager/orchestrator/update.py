"""Rolling updates of replicated services: tasks of an older spec are replaced
`parallelism` at a time, `delay` apart, stop-first or start-first; a failed new
task pauses the update or rolls it back to the previous spec."""

from __future__ import annotations

from shoal.clock import now_ms
from shoal.manager.orchestrator.plan import Plan, shut_down
from shoal.manager.orchestrator.tasks import is_current, new_task, ready_for_update
from shoal.manager.scheduler import is_live
from shoal.manager.store import Cache, Update
from shoal.proto import objects_pb2 as pb

_ACTIVE = (pb.UpdateStatus.UPDATING, pb.UpdateStatus.ROLLBACK_STARTED)
_PAUSED = (pb.UpdateStatus.PAUSED, pb.UpdateStatus.ROLLBACK_PAUSED)



def update_config(service: pb.Service) -> pb.UpdateConfig:
    """What the current roll follows: while rolling back, the rollback config of the spec
    being rolled back from (compose's rollback_config), if it has one."""
    rolling_back = service.update_status.state in (
        pb.UpdateStatus.ROLLBACK_STARTED,
        pb.UpdateStatus.ROLLBACK_PAUSED,
    )
    if rolling_back and service.previous_spec.HasField("rollback"):
        return service.previous_spec.rollback
    return service.spec.update

def updating(service: pb.Service) -> bool:
    """An update or a rollback is under way."""
    return service.update_status.state in _ACTIVE


def start_first_handover(service: pb.Service, live: list[pb.Task], plan: Plan) -> bool:
    """start-first updates: an old task and its replacement share the slot until the
    replacement is ready (running, healthy if checked); then the old one stops."""
    if update_config(service).order != pb.UpdateConfig.START_FIRST:
        return False
    current = [t for t in live if is_current(t, service)]
    old = [t for t in live if not is_current(t, service)]
    if not current or not old:
        return False
    newest = max(current, key=lambda t: t.meta.created_at_ms)
    for t in current:
        if t is not newest:
            shut_down(t, plan, "duplicate task in slot")
    if ready_for_update(newest):
        for t in old:
            shut_down(t, plan, "replaced by an updated task")
    else:
        old.sort(key=lambda t: (t.status.state, t.meta.created_at_ms), reverse=True)
        for t in old[1:]:
            shut_down(t, plan, "duplicate task in slot")
    return True


class Updater:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def roll(self, service: pb.Service, by_slot: dict[int, list[pb.Task]], plan: Plan) -> None:
        """A rolling update: tasks of an older spec are replaced `parallelism` at a time
        (stop-first), `delay` apart; a failed new task pauses, or rolls back, the update."""
        outdated: list[pb.Task] = []
        in_flight = 0
        last_running = 0
        for slot, slot_tasks in by_slot.items():
            if slot > service.spec.replicated.replicas:
                continue
            for t in slot_tasks:
                if not is_live(t):
                    continue
                if not is_current(t, service):
                    if t.id not in plan.touched:
                        outdated.append(t)
                elif t.id in plan.touched or not ready_for_update(t):
                    # A new task released this pass (it waited for its old one to stop)
                    # is in flight too.
                    in_flight += 1
                else:
                    last_running = max(last_running, int(t.status.timestamp_ms))
        if updating(service) and self._settle(
            service, plan, finished=not outdated and not in_flight
        ):
            return
        if not outdated or service.update_status.state in _PAUSED:
            return
        delay = update_config(service).delay_ms
        if delay and in_flight == 0 and last_running and now_ms() < last_running + delay:
            plan.wake_at(last_running + delay, service.id)
            return
        parallelism = update_config(service).parallelism
        start_first = update_config(service).order == pb.UpdateConfig.START_FIRST
        if start_first:
            # A slot whose replacement already started is handed over, not updated again.
            started = {
                t.slot
                for ts in by_slot.values()
                for t in ts
                if is_current(t, service) and is_live(t)
            }
            outdated = [t for t in outdated if t.slot not in started]
        budget = len(outdated) if parallelism == 0 else max(0, parallelism - in_flight)
        outdated.sort(key=lambda t: t.slot)
        for t in outdated[:budget]:
            replacement = new_task(service, int(t.slot))
            if not start_first:
                shut_down(t, plan, "updating to a new spec")
                # Held (READY: placed, its image pulled) until the old task stopped.
                replacement.desired_state = pb.READY
            plan.create(replacement)

    def _settle(self, service: pb.Service, plan: Plan, finished: bool) -> bool:
        """An update under way: stopped by a failed new task, or marked complete when
        nothing is left to replace. True if the update goes no further this pass."""
        status = service.update_status
        failed = next(
            (
                t
                for t in self.cache.tasks_of_service(service.id)
                if is_current(t, service)
                and t.status.state in (pb.FAILED, pb.REJECTED)
                and t.meta.created_at_ms >= status.started_at_ms
            ),
            None,
        )
        if failed is not None and self._on_failure(service, failed, plan):
            return True
        if not finished:
            return False
        done = pb.Service()
        done.CopyFrom(service)
        done.update_status.state = (
            pb.UpdateStatus.COMPLETED
            if status.state == pb.UpdateStatus.UPDATING
            else pb.UpdateStatus.ROLLBACK_COMPLETED
        )
        done.update_status.completed_at_ms = now_ms()
        plan.ops.append(Update(done))
        return True

    @staticmethod
    def _on_failure(service: pb.Service, failed: pb.Task, plan: Plan) -> bool:
        """Applies the update's failure action; True if the update stops here."""
        action = update_config(service).failure_action
        if action == pb.UpdateConfig.CONTINUE:
            return False
        updated = pb.Service()
        updated.CopyFrom(service)
        reason = f"task {failed.id[:12]} failed: {failed.status.err or 'exited'}"
        rolling_back = service.update_status.state == pb.UpdateStatus.ROLLBACK_STARTED
        if (
            action == pb.UpdateConfig.ROLLBACK
            and not rolling_back
            and service.HasField("previous_spec")
        ):
            updated.spec.CopyFrom(service.previous_spec)
            updated.previous_spec.CopyFrom(service.spec)
            updated.spec_version = service.spec_version + 1
            updated.update_status.CopyFrom(
                pb.UpdateStatus(
                    state=pb.UpdateStatus.ROLLBACK_STARTED,
                    started_at_ms=now_ms(),
                    message=f"update rolled back: {reason}",
                )
            )
        else:
            updated.update_status.state = (
                pb.UpdateStatus.ROLLBACK_PAUSED if rolling_back else pb.UpdateStatus.PAUSED
            )
            updated.update_status.message = f"update paused: {reason}"
        plan.ops.append(Update(updated))
        return True
