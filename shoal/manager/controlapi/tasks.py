"""Task RPCs: list (by service and/or node) and inspect."""

from __future__ import annotations

from typing import Any

from shoal.manager.controlapi.base import ControlBase, rpc
from shoal.manager.store import Kind
from shoal.proto import control_pb2 as api


class TaskRPCs(ControlBase):
    @rpc
    async def ListTasks(self, request: api.ListTasksRequest, context: Any) -> api.ListTasksResponse:
        await self.cache.sync()
        if request.service_ref:
            service = self.resolve(Kind.SERVICE, request.service_ref)
            tasks = self.cache.tasks_of_service(service.id)
            if request.node_ref:
                node_id = self.resolve(Kind.NODE, request.node_ref).id
                tasks = [t for t in tasks if t.node_id == node_id]
        elif request.node_ref:
            tasks = self.cache.tasks_of_node(self.resolve(Kind.NODE, request.node_ref).id)
        else:
            tasks = self.cache.list_objects(Kind.TASK)
        tasks.sort(key=lambda t: (t.service_name, t.slot, t.node_id, -t.meta.created_at_ms))
        return api.ListTasksResponse(tasks=tasks)

    @rpc
    async def GetTask(self, request: api.GetTaskRequest, context: Any) -> api.GetTaskResponse:
        await self.cache.sync()
        return api.GetTaskResponse(task=self.resolve(Kind.TASK, request.ref))
