"""Network RPCs: create (with VNI and subnet allocation), inspect, list, remove."""

from __future__ import annotations

from typing import Any

from shoal.manager import allocator, endpoints
from shoal.manager.controlapi.base import ControlBase, Precondition, rpc
from shoal.manager.ids import new_id
from shoal.manager.store import AlreadyExists, Kind
from shoal.manager.validation import check_network_spec
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb


class NetworkRPCs(ControlBase):
    @rpc
    async def CreateNetwork(
        self, request: api.CreateNetworkRequest, context: Any
    ) -> api.CreateNetworkResponse:
        await self.cache.sync()
        spec = request.spec
        if not spec.driver:
            spec.driver = "overlay"
        requested = check_network_spec(spec)
        if self.cache.id_by_name(Kind.NETWORK, spec.annotations.name):
            raise AlreadyExists(f"network {spec.annotations.name!r} already exists")
        net = pb.Network(id=new_id(), spec=spec)
        allocator.allocate_network(
            net,
            self.cache.list_objects(Kind.NETWORK),
            requested,
            reserved=endpoints.vip_range(self.cluster()),
        )
        await self.store.create(net)
        return api.CreateNetworkResponse(network=net)

    @rpc
    async def GetNetwork(
        self, request: api.GetNetworkRequest, context: Any
    ) -> api.GetNetworkResponse:
        await self.cache.sync()
        return api.GetNetworkResponse(network=self.resolve(Kind.NETWORK, request.ref))

    @rpc
    async def ListNetworks(
        self, request: api.ListNetworksRequest, context: Any
    ) -> api.ListNetworksResponse:
        await self.cache.sync()
        nets = sorted(self.cache.list_objects(Kind.NETWORK), key=lambda n: n.spec.annotations.name)
        return api.ListNetworksResponse(networks=nets)

    @rpc
    async def RemoveNetwork(
        self, request: api.RemoveNetworkRequest, context: Any
    ) -> api.RemoveNetworkResponse:
        await self.cache.sync()
        net: pb.Network = self.resolve(Kind.NETWORK, request.ref)
        users = sorted(
            s.spec.annotations.name
            for s in self.cache.list_objects(Kind.SERVICE)
            if any(a.target == net.id for a in s.spec.task.networks)
        )
        if users:
            raise Precondition(
                f"network {net.spec.annotations.name!r} is in use by service(s) {', '.join(users)}"
            )
        await self.store.delete(net)
        return api.RemoveNetworkResponse(id=net.id)
