"""Cluster RPCs: inspect and update the cluster object, rotate join tokens.
The CA private key never leaves the store."""

from __future__ import annotations

from typing import Any

from shoal.manager import endpoints
from shoal.manager.controlapi.base import ControlBase, rpc
from shoal.manager.store import Conflict, Kind
from shoal.manager.validation import InvalidSpec, check_cluster_spec, check_enum
from shoal.pki import ca
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

# Trailing metadata key of GetCluster: "idle" or "busy" (see GetCluster).
RECONCILER_KEY = "shoal-reconciler"


class ClusterRPCs(ControlBase):
    @rpc
    async def GetCluster(
        self, request: api.GetClusterRequest, context: Any
    ) -> api.GetClusterResponse:
        # Reports written before the sync are in the cache after it.
        flushed = self.dispatcher is None or self.dispatcher.flushed()
        await self.cache.sync()
        # Debug state in trailing metadata (not part of the API's messages): "idle"
        # means this manager leads, has written the agents' reports it holds and acted
        # on every change up to now. Tests wait for it instead of sleeping before they
        # check that nothing more changed.
        idle = flushed and self.reconciler_idle is not None and self.reconciler_idle()
        context.set_trailing_metadata(((RECONCILER_KEY, "idle" if idle else "busy"),))
        return api.GetClusterResponse(cluster=public_cluster(self.cluster()))

    @rpc
    async def UpdateCluster(
        self, request: api.UpdateClusterRequest, context: Any
    ) -> api.UpdateClusterResponse:
        await self.cache.sync()
        current = self.cluster()
        if request.version and request.version != current.meta.version:
            raise Conflict("the cluster changed since it was read; try again")
        check_cluster_spec(request.spec)
        if request.spec.vip_range and request.spec.vip_range != current.spec.vip_range:
            endpoints.check_vip_range(request.spec.vip_range, self.cache.list_objects(Kind.NETWORK))
        if request.spec.annotations.name != current.spec.annotations.name:
            raise InvalidSpec("the cluster cannot be renamed")
        updated = pb.Cluster()
        updated.CopyFrom(current)
        updated.spec.CopyFrom(request.spec)
        await self.store.update(updated)
        return api.UpdateClusterResponse(cluster=public_cluster(updated))

    @rpc
    async def RotateJoinToken(
        self, request: api.RotateJoinTokenRequest, context: Any
    ) -> api.RotateJoinTokenResponse:
        check_enum("node role", request.role, pb.NodeRole.values())
        await self.cache.sync()
        updated = pb.Cluster()
        updated.CopyFrom(self.cluster())
        token = ca.new_join_token(updated.root_ca.ca_digest)
        if request.role == pb.ROLE_MANAGER:
            updated.join_tokens.manager = token
        else:
            updated.join_tokens.worker = token
        await self.store.update(updated)
        return api.RotateJoinTokenResponse(cluster=public_cluster(updated))


def public_cluster(cluster: pb.Cluster) -> pb.Cluster:
    """The cluster without its CA private key, which never leaves the store."""
    out = pb.Cluster()
    out.CopyFrom(cluster)
    out.root_ca.ClearField("ca_key_pem")
    out.root_ca.ClearField("ca_key_sealed")
    return out
