"""Node RPCs: list, inspect (managers with their live status), update, remove."""

from __future__ import annotations

import datetime
from typing import Any

from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.nodeca import cert_validity
from shoal.manager.store import Conflict, Kind
from shoal.manager.validation import InvalidSpec, check_node_spec
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

# Without a cluster object (never, once initialised): SwarmKit's default certificate life.
DEFAULT_REMEMBER = datetime.timedelta(days=90)


class NodeRPCs(ControlBase):
    @rpc
    async def ListNodes(self, request: api.ListNodesRequest, context: Any) -> api.ListNodesResponse:
        await self.cache.sync()
        nodes = sorted(
            self.cache.list_objects(Kind.NODE), key=lambda n: (n.description.hostname, n.id)
        )
        return api.ListNodesResponse(nodes=[self._observed(n) for n in nodes])

    @rpc
    async def GetNode(self, request: api.GetNodeRequest, context: Any) -> api.GetNodeResponse:
        await self.cache.sync()
        return api.GetNodeResponse(node=self._observed(self.resolve(Kind.NODE, request.ref)))

    def _observed(self, node: pb.Node) -> pb.Node:
        """A manager's node with its live status: reachable while its presence key is on a
        kept-alive lease, leader while it holds the leader key."""
        if node.role != pb.ROLE_MANAGER:
            return node
        out = pb.Node()
        out.CopyFrom(node)
        live = self.cache.managers()
        ms = out.manager_status
        ms.reachable = node.id in live
        ms.leader = ms.reachable and self.cache.leader_id() == node.id
        ms.addr = live.get(node.id) or ms.addr
        out.status.state = pb.NODE_READY if ms.reachable else pb.NODE_DOWN
        out.status.addr = out.status.addr or ms.addr.rpartition(":")[0]
        return out

    @rpc
    async def UpdateNode(
        self, request: api.UpdateNodeRequest, context: Any
    ) -> api.UpdateNodeResponse:
        await self.cache.sync()
        current: pb.Node = self.resolve(Kind.NODE, request.ref)
        if request.version and request.version != current.meta.version:
            raise Conflict(
                f"node {current.description.hostname or current.id} changed since it was read; "
                "try again"
            )
        check_node_spec(request.spec)
        if request.spec.desired_role != current.spec.desired_role:
            # Nothing acts on a role change: refuse it rather than store a wish.
            raise InvalidSpec("changing a node's role is not supported")
        updated = pb.Node()
        updated.CopyFrom(current)
        updated.spec.CopyFrom(request.spec)
        await self.store.update(updated)
        return api.UpdateNodeResponse(node=updated)

    @rpc
    async def RemoveNode(
        self, request: api.RemoveNodeRequest, context: Any
    ) -> api.RemoveNodeResponse:
        await self.cache.sync()
        node: pb.Node = self.resolve(Kind.NODE, request.ref)
        if node.role == pb.ROLE_MANAGER and node.id in self.cache.managers():
            raise Precondition(
                f"node {node.description.hostname or node.id} is a running manager: stop it first"
            )
        if node.status.state == pb.NODE_READY and not request.force:
            raise Precondition(
                f"node {node.description.hostname or node.id} is ready: stop its agent first, "
                "or use --force"
            )
        # Its tasks are rescheduled by the orchestrator (their node is gone). A join
        # still retrying with the node's key (its node id) must not bring it back, for
        # as long as any certificate issued to that key can be valid.
        cluster = self.cache.cluster()
        remember = cert_validity(cluster) if cluster is not None else DEFAULT_REMEMBER
        await self.store.delete_remembered(node, max(int(remember.total_seconds()), 1))
        return api.RemoveNodeResponse(id=node.id)
