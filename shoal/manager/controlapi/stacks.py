"""Stack RPCs (the planning is in manager/stacks.py): one transaction per deploy."""

from __future__ import annotations

from typing import Any

from shoal.manager import secrets, stacks
from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.store import NotFound, Op
from shoal.manager.store.kinds import claims
from shoal.manager.store.store import MAX_TXN_BYTES
from shoal.manager.store.txn import MAX_TXN_OPS
from shoal.manager.validation import InvalidSpec, check_name
from shoal.proto import control_pb2 as api


def _check_size(ops: list[Op]) -> None:
    """One transaction: refused up front if etcd would not take it whole."""
    writes = sum(1 + len(claims(op.obj)) for op in ops)
    size = sum(op.obj.ByteSize() for op in ops)
    if writes > MAX_TXN_OPS - 1 or size > MAX_TXN_BYTES:
        raise InvalidSpec(
            f"the stack needs {writes} writes of {size} bytes, more than one etcd "
            f"transaction holds ({MAX_TXN_OPS - 1} writes, {MAX_TXN_BYTES} bytes); split it "
            "into smaller stacks"
        )


class StackRPCs(ControlBase):
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
        return api.DeployStackResponse(
            changes=plan.changes, dry_run=request.dry_run, warnings=plan.warnings
        )

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
