"""The control API's stack RPCs (planning in stacks.py): one transaction per deploy."""

from __future__ import annotations

from typing import Any

from shoal.manager import secrets, stacks
from shoal.manager.controlapi import Precondition, rpc
from shoal.manager.secretsapi import SecretsAPI
from shoal.manager.store import Kind, NotFound, Op
from shoal.manager.store.kinds import claims
from shoal.manager.store.store import MAX_TXN_OPS
from shoal.manager.validation import InvalidSpec, check_name
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb


def _check_size(ops: list[Op]) -> None:
    writes = sum(1 + len(claims(op.obj)) for op in ops)
    if writes > MAX_TXN_OPS - 1:
        raise InvalidSpec(
            f"the stack needs {writes} writes, more than one etcd transaction holds "
            f"({MAX_TXN_OPS - 1}); split it into smaller stacks"
        )


class StacksAPI(SecretsAPI):
    def _prepare_spec(self, spec: pb.ServiceSpec) -> pb.ServiceSpec:
        out = super()._prepare_spec(spec)
        ids = [self.resolve(Kind.SERVICE, ref).id for ref in out.depends_on_healthy]
        del out.depends_on_healthy[:]
        out.depends_on_healthy.extend(ids)
        return out

    @rpc
    async def DeployStack(
        self, request: api.DeployStackRequest, context: Any
    ) -> api.DeployStackResponse:
        await self.cache.sync()
        keys = await secrets.require_keys(self.keys).follow()
        try:
            plan = await stacks.plan_deploy(self, keys, request)
        except stacks.StackInUse as err:
            raise Precondition(str(err)) from None
        if not request.dry_run and plan.ops:
            _check_size(plan.ops)
            revision = await self.store.batch(plan.ops)
            await self.cache.wait_for(revision)
        return api.DeployStackResponse(changes=plan.changes, dry_run=request.dry_run)

    @rpc
    async def ListStacks(
        self, request: api.ListStacksRequest, context: Any
    ) -> api.ListStacksResponse:
        await self.cache.sync()
        return api.ListStacksResponse(stacks=stacks.stack_list(self.cache))

    @rpc
    async def RemoveStack(
        self, request: api.RemoveStackRequest, context: Any
    ) -> api.RemoveStackResponse:
        await self.cache.sync()
        check_name("stack", request.name)
        plan = stacks.Plan(request.name)
        try:
            stacks.plan_removals(self.cache, plan, set())
        except stacks.StackInUse as err:
            raise Precondition(str(err)) from None
        if not plan.ops:
            raise NotFound(f"stack {request.name!r} not found")
        _check_size(plan.ops)
        revision = await self.store.batch(plan.ops)
        await self.cache.wait_for(revision)
        return api.RemoveStackResponse(changes=plan.changes)
