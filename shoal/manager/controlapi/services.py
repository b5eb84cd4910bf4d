"""Service RPCs: create, update (and roll back), remove, read, watch a service
converge, and stream its tasks' logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from shoal import defaults
from shoal.aiotasks import cancel_and_wait
from shoal.clock import now_ms
from shoal.manager import endpoints, secrets
from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.ids import new_id
from shoal.manager.orchestrator.tasks import task_spec_of
from shoal.manager.store import AlreadyExists, Conflict, Kind
from shoal.manager.validation import InvalidSpec, check_service_spec
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

MAX_TASK_ERRORS = 5


class ServiceRPCs(ControlBase):
    def service_info(self, service: pb.Service) -> api.ServiceInfo:
        tally = self.cache.tally(service.id)
        # Ready tasks of an older spec version count if that spec is the current one
        # again (a rollback). Every task of a version was made from the same task spec
        # (a new spec or pinned image is a new version): one of each is compared.
        updated = 0
        current: pb.TaskSpec | None = None
        for version, tasks in tally.ready.items():
            if version == service.spec_version:
                updated += len(tasks)
            elif tasks:
                if current is None:
                    current = task_spec_of(service)
                updated += len(tasks) if next(iter(tasks.values())).spec == current else 0
        return api.ServiceInfo(
            service=service, desired=tally.desired, running=tally.running, running_updated=updated
        )

    def _prepare_spec(self, spec: pb.ServiceSpec) -> pb.ServiceSpec:
        out = pb.ServiceSpec()
        out.CopyFrom(spec)
        defaults.fill_service_spec(out)
        check_service_spec(out)
        seen: set[str] = set()
        internal = []
        for attachment in out.task.networks:
            net = self.resolve(Kind.NETWORK, attachment.target)
            if net.id in seen:
                raise InvalidSpec(f"network {net.spec.annotations.name!r} is attached twice")
            seen.add(net.id)
            attachment.target = net.id
            internal.append(net.spec.internal)
        if out.ports and internal and all(internal):
            raise InvalidSpec(
                f"port {endpoints.port_name(out.ports[0])} cannot be published: every network "
                "of the service is internal (no way in or out); add a non-internal one"
            )
        secrets.resolve_refs(self, out)
        depends = [self.resolve(Kind.SERVICE, ref).id for ref in out.depends_on_healthy]
        out.ClearField("depends_on_healthy")
        out.depends_on_healthy.extend(depends)
        return out

    @rpc
    async def CreateService(
        self, request: api.CreateServiceRequest, context: Any
    ) -> api.CreateServiceResponse:
        await self.cache.sync()
        spec = self._prepare_spec(request.spec)
        spec.task.force_update = 0  # the manager's count (UpdateService)
        if self.cache.id_by_name(Kind.SERVICE, spec.annotations.name):
            raise AlreadyExists(f"service {spec.annotations.name!r} already exists")
        pinned, warning = await self.pinner.pin(spec.task.container.image)
        service = pb.Service(id=new_id(), spec=spec, spec_version=1, pinned_image=pinned)
        endpoints.allocate(service, self.cache, self.cluster())
        await self.store.create(service)
        info = api.ServiceInfo(service=service, warnings=[warning] if warning else [])
        return api.CreateServiceResponse(service=info)

    @rpc
    async def UpdateService(
        self, request: api.UpdateServiceRequest, context: Any
    ) -> api.UpdateServiceResponse:
        await self.cache.sync()
        current: pb.Service = self.resolve(Kind.SERVICE, request.ref)
        if request.version and request.version != current.meta.version:
            raise Conflict(
                f"service {current.spec.annotations.name!r} changed since it was read "
                f"(version {request.version}, now {current.meta.version}); try again"
            )
        if request.rollback:
            if not current.HasField("previous_spec"):
                raise Precondition(
                    f"service {current.spec.annotations.name!r} has no previous spec to roll "
                    "back to"
                )
            spec = self._prepare_spec(current.previous_spec)
        else:
            spec = self._prepare_spec(request.spec)
        if spec.annotations.name != current.spec.annotations.name:
            raise InvalidSpec("a service cannot be renamed")
        if spec.WhichOneof("mode") != current.spec.WhichOneof("mode"):
            raise InvalidSpec("a service's mode (replicated or global) cannot be changed")
        if not request.rollback:
            spec.task.force_update = current.spec.task.force_update + (1 if request.force else 0)
        updated = pb.Service()
        updated.CopyFrom(current)
        updated.spec.CopyFrom(spec)
        updated.previous_spec.CopyFrom(current.spec)
        endpoints.allocate(updated, self.cache, self.cluster())
        updated.previous_pinned_image = current.pinned_image
        warning = ""
        if request.rollback:
            updated.pinned_image = current.previous_pinned_image  # the very same bytes
        elif request.force or spec.task.container.image != current.spec.task.container.image:
            updated.pinned_image, warning = await self.pinner.pin(spec.task.container.image)
        # Only a new task spec (or image digest, or --force) means new tasks; a replica
        # count change does not.
        if (
            spec.task != current.spec.task
            or updated.pinned_image != current.pinned_image
            or request.force
        ):
            updated.spec_version = current.spec_version + 1
            updated.update_status.CopyFrom(
                pb.UpdateStatus(
                    state=pb.UpdateStatus.ROLLBACK_STARTED
                    if request.rollback
                    else pb.UpdateStatus.UPDATING,
                    started_at_ms=now_ms(),
                )
            )
        await self.store.update(updated)
        await self.cache.wait_for(updated.meta.version)
        info = self.service_info(updated)
        if warning:
            info.warnings.append(warning)
        return api.UpdateServiceResponse(service=info)

    @rpc
    async def RemoveService(
        self, request: api.RemoveServiceRequest, context: Any
    ) -> api.RemoveServiceResponse:
        await self.cache.sync()
        service: pb.Service = self.resolve(Kind.SERVICE, request.ref)
        # The orchestrator stops and removes the tasks of a service that is gone.
        await self.store.delete(service)
        return api.RemoveServiceResponse(id=service.id)

    @rpc
    async def GetService(
        self, request: api.GetServiceRequest, context: Any
    ) -> api.GetServiceResponse:
        await self.cache.sync()
        return api.GetServiceResponse(
            service=self.service_info(self.resolve(Kind.SERVICE, request.ref))
        )

    @rpc
    async def ListServices(
        self, request: api.ListServicesRequest, context: Any
    ) -> api.ListServicesResponse:
        await self.cache.sync()
        services = sorted(
            self.cache.list_objects(Kind.SERVICE), key=lambda s: s.spec.annotations.name
        )
        return api.ListServicesResponse(services=[self.service_info(s) for s in services])

    async def WatchService(
        self, request: api.WatchServiceRequest, context: Any
    ) -> AsyncIterator[api.WatchServiceResponse]:
        service: pb.Service | None = await self.resolve_or_abort(Kind.SERVICE, request.ref, context)
        if service is None:
            return
        with self.cache.subscribe() as sub:
            progress = self._progress(service.id)
            yield progress
            while not progress.removed:
                resync, changes = await sub.next()
                if resync or any(self._concerns(c, service.id) for c in changes):
                    progress = self._progress(service.id)
                    yield progress

    @staticmethod
    def _concerns(change: Any, service_id: str) -> bool:
        if change.kind == Kind.SERVICE:
            return bool(change.id == service_id)
        if change.kind == Kind.TASK:
            task = change.obj or change.old
            return bool(task is not None and task.service_id == service_id)
        return False

    def _progress(self, service_id: str) -> api.WatchServiceResponse:
        service = self.cache.get(Kind.SERVICE, service_id)
        if service is None:
            return api.WatchServiceResponse(removed=True)
        # Only tasks with an error are sorted: this runs at every change of a
        # watched service, and a big service has thousands of healthy tasks.
        tally = self.cache.tally(service_id)
        # One pull per image and node: the tasks waiting on it say the same.
        pulls = dict.fromkeys(t.status.message for t in tally.pulling.values())
        errored = sorted(tally.errored.values(), key=lambda t: t.status.timestamp_ms, reverse=True)
        errors: list[str] = []
        for t in errored:
            if t.status.err not in errors:
                errors.append(t.status.err)
            if len(errors) >= MAX_TASK_ERRORS:
                break
        return api.WatchServiceResponse(
            service=self.service_info(service),
            task_errors=errors,
            task_progress=list(pulls)[:MAX_TASK_ERRORS],
        )

    async def ServiceLogs(
        self, request: api.ServiceLogsRequest, context: Any
    ) -> AsyncIterator[api.ServiceLogsResponse]:
        service: pb.Service | None = await self.resolve_or_abort(Kind.SERVICE, request.ref, context)
        if service is None:
            return
        if self.dispatcher is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no dispatcher on this manager")
            return
        by_node: dict[str, list[pb.Task]] = {}
        for t in self.cache.tasks_of_service(service.id):
            if t.node_id and t.status.state >= pb.STARTING:
                by_node.setdefault(t.node_id, []).append(t)
        out: asyncio.Queue[api.ServiceLogsResponse | Exception | None] = asyncio.Queue()
        dispatcher = self.dispatcher

        async def pump(node_id: str, tasks: list[pb.Task]) -> None:
            slots = {t.id: t.slot for t in tasks}
            try:
                async for chunk in dispatcher.logs(
                    node_id, list(slots), request.follow, request.tail
                ):
                    out.put_nowait(
                        api.ServiceLogsResponse(
                            task_id=chunk.task_id,
                            slot=slots.get(chunk.task_id, 0),
                            node_id=node_id,
                            data=chunk.data,
                        )
                    )
            except LookupError as err:
                out.put_nowait(Exception(str(err)))
            finally:
                out.put_nowait(None)

        pumps = [asyncio.create_task(pump(n, ts)) for n, ts in by_node.items()]
        try:
            remaining = len(pumps)
            while remaining:
                item = await out.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, Exception):
                    log.warning("service logs: %s", item)
                else:
                    yield item
        finally:
            await cancel_and_wait(pumps)
