"""The control API client: a sync gRPC channel to the manager's unix socket.

Every method returns plain proto objects and turns a failed call into a
CLIError whose message is one sentence for stderr.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.errors import CLIError as CLIError  # re-exported: raised by every call
from shoal.swarmctl.errors import one_line

CALL_TIMEOUT_S = 10.0

# What gRPC core (not the manager) says when the transport itself fails.
_TRANSPORT_ERRORS = ("failed to connect", "socket closed", "connection reset", "broken pipe")


def rpc_error(err: grpc.RpcError, socket: str) -> CLIError:
    status = err.code()
    code = status.name.lower()
    details = one_line(err.details() or "") or code.replace("_", " ")
    if status == grpc.StatusCode.UNAVAILABLE and any(
        marker in details.lower() for marker in _TRANSPORT_ERRORS
    ):
        # gRPC core's text repeats the address; the OS reason ends it.
        reason = details.rsplit("error: ", 1)[-1]
        return CLIError(f"cannot reach the manager at {socket}: {reason}", code)
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CLIError(f"the manager at {socket} did not answer in time", code)
    # The manager's details are a sentence meant for the user.
    return CLIError(details, code)


class Client:
    def __init__(self, socket: str, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.socket = socket
        self.timeout_s = timeout_s
        # unix:// needs an absolute path; a relative --socket is relative to the cwd.
        self._channel = grpc.insecure_channel(f"unix://{os.path.abspath(socket)}")
        self._stub = api_grpc.ControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise rpc_error(err, self.socket) from None

    def call(self, method: str, request: Any) -> Any:
        """Any unary ControlAPI method by name."""
        return self._call(getattr(self._stub, method), request)

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout_s: float | None
    ) -> Iterator[Any]:
        """Yields a server stream's messages; ends quietly when `timeout_s` runs out."""
        call = method(request, timeout=timeout_s)
        try:
            yield from call
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise rpc_error(err, self.socket) from None
        finally:
            call.cancel()

    # ------------------------------------------------------------ services

    def create_service(self, spec: pb.ServiceSpec) -> api.ServiceInfo:
        resp: api.CreateServiceResponse = self._call(
            self._stub.CreateService, api.CreateServiceRequest(spec=spec)
        )
        return resp.service

    def update_service(
        self,
        ref: str,
        version: int,
        spec: pb.ServiceSpec | None = None,
        rollback: bool = False,
        force: bool = False,
    ) -> api.ServiceInfo:
        req = api.UpdateServiceRequest(
            ref=ref, version=version, spec=spec, rollback=rollback, force=force
        )
        resp: api.UpdateServiceResponse = self._call(self._stub.UpdateService, req)
        return resp.service

    def remove_service(self, ref: str) -> str:
        resp: api.RemoveServiceResponse = self._call(
            self._stub.RemoveService, api.RemoveServiceRequest(ref=ref)
        )
        return resp.id

    def get_service(self, ref: str) -> api.ServiceInfo:
        resp: api.GetServiceResponse = self._call(
            self._stub.GetService, api.GetServiceRequest(ref=ref)
        )
        return resp.service

    def list_services(self) -> list[api.ServiceInfo]:
        resp: api.ListServicesResponse = self._call(
            self._stub.ListServices, api.ListServicesRequest()
        )
        return list(resp.services)

    def watch_service(self, ref: str, timeout_s: float) -> Iterator[api.WatchServiceResponse]:
        """The service's progress, at once and on every change, until `timeout_s` passes."""
        it: Iterator[api.WatchServiceResponse] = self._stream(
            self._stub.WatchService, api.WatchServiceRequest(ref=ref), timeout_s
        )
        return it

    def service_logs(
        self, ref: str, follow: bool = False, tail: int = 0
    ) -> Iterator[api.ServiceLogsResponse]:
        it: Iterator[api.ServiceLogsResponse] = self._stream(
            self._stub.ServiceLogs,
            api.ServiceLogsRequest(ref=ref, follow=follow, tail=tail),
            None,  # a deadline would cut long output short without a word
        )
        return it

    def events(self, request: api.EventsRequest) -> Iterator[api.Event]:
        """The cluster's changes, replayed as asked and then live, until interrupted."""
        for batch in self._stream(self._stub.Events, request, None):
            yield from batch.events

    # ------------------------------------------------------------ tasks

    def list_tasks(self, service_ref: str = "", node_ref: str = "") -> list[pb.Task]:
        resp: api.ListTasksResponse = self._call(
            self._stub.ListTasks, api.ListTasksRequest(service_ref=service_ref, node_ref=node_ref)
        )
        return list(resp.tasks)

    def get_task(self, ref: str) -> pb.Task:
        resp: api.GetTaskResponse = self._call(self._stub.GetTask, api.GetTaskRequest(ref=ref))
        return resp.task

    # ------------------------------------------------------------ nodes

    def list_nodes(self) -> list[pb.Node]:
        resp: api.ListNodesResponse = self._call(self._stub.ListNodes, api.ListNodesRequest())
        return list(resp.nodes)

    def get_node(self, ref: str) -> pb.Node:
        resp: api.GetNodeResponse = self._call(self._stub.GetNode, api.GetNodeRequest(ref=ref))
        return resp.node

    def update_node(self, ref: str, version: int, spec: pb.NodeSpec) -> pb.Node:
        resp: api.UpdateNodeResponse = self._call(
            self._stub.UpdateNode, api.UpdateNodeRequest(ref=ref, version=version, spec=spec)
        )
        return resp.node

    def remove_node(self, ref: str, force: bool = False) -> str:
        resp: api.RemoveNodeResponse = self._call(
            self._stub.RemoveNode, api.RemoveNodeRequest(ref=ref, force=force)
        )
        return resp.id

    # ------------------------------------------------------------ networks

    def create_network(self, spec: pb.NetworkSpec) -> pb.Network:
        resp: api.CreateNetworkResponse = self._call(
            self._stub.CreateNetwork, api.CreateNetworkRequest(spec=spec)
        )
        return resp.network

    def get_network(self, ref: str) -> pb.Network:
        resp: api.GetNetworkResponse = self._call(
            self._stub.GetNetwork, api.GetNetworkRequest(ref=ref)
        )
        return resp.network

    def list_networks(self) -> list[pb.Network]:
        resp: api.ListNetworksResponse = self._call(
            self._stub.ListNetworks, api.ListNetworksRequest()
        )
        return list(resp.networks)

    def remove_network(self, ref: str) -> str:
        resp: api.RemoveNetworkResponse = self._call(
            self._stub.RemoveNetwork, api.RemoveNetworkRequest(ref=ref)
        )
        return resp.id

    # ------------------------------------------------------------ cluster

    def get_cluster(self) -> pb.Cluster:
        resp: api.GetClusterResponse = self._call(self._stub.GetCluster, api.GetClusterRequest())
        return resp.cluster

    def rotate_join_token(self, role: pb.NodeRole.ValueType) -> pb.Cluster:
        resp: api.RotateJoinTokenResponse = self._call(
            self._stub.RotateJoinToken, api.RotateJoinTokenRequest(role=role)
        )
        return resp.cluster

    def update_cluster(self, version: int, spec: pb.ClusterSpec) -> pb.Cluster:
        resp: api.UpdateClusterResponse = self._call(
            self._stub.UpdateCluster, api.UpdateClusterRequest(version=version, spec=spec)
        )
        return resp.cluster
