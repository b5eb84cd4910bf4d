"""The control API: validates requests, writes desired state, reads from the cache.

Reads first catch the cache up with etcd (`Cache.sync`), so a client sees its
own writes. Every write is one etcd transaction decided by compare-and-swap: a
rejected request writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shoal import defaults
from shoal.manager import allocator, ca, endpoints
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.ids import new_id
from shoal.manager.orchestrator import is_current, ready_for_update
from shoal.manager.store import (
    AlreadyExists,
    Cache,
    Conflict,
    Kind,
    NotFound,
    Store,
    Unavailable,
)
from shoal.manager.store.kinds import now_ms
from shoal.manager.validation import (
    InvalidSpec,
    check_cluster_spec,
    check_network_spec,
    check_node_spec,
    check_service_spec,
)
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

R = TypeVar("R")
MAX_TASK_ERRORS = 5


class Precondition(Exception):
    """The request is valid but the object is not in a state that allows it."""


_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    (Precondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def _status(err: Exception) -> grpc.StatusCode | None:
    return next((code for cls, code in _CODES if isinstance(err, cls)), None)


def rpc(
    fn: Callable[[Any, Any, Any], Awaitable[R]],
) -> Callable[[Any, Any, Any], Awaitable[R]]:
    """Maps domain errors onto gRPC status codes with the error's sentence as details."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await fn(self, request, context)
        except Exception as err:
            code = _status(err)
            if code is None:
                log.exception("%s failed", fn.__name__)
                raise
            await context.abort(code, str(err))
            raise  # unreachable: abort raises

    return wrapper


_KIND_WORD = {
    Kind.SERVICE: "service",
    Kind.TASK: "task",
    Kind.NODE: "node",
    Kind.NETWORK: "network",
    Kind.CLUSTER: "cluster",
}


class ControlAPI(api_grpc.ControlServicer):
    def __init__(self, store: Store, cache: Cache, dispatcher: Dispatcher | None = None) -> None:
        self.store = store
        self.cache = cache
        self.dispatcher = dispatcher

    # ------------------------------------------------------------ lookups

    def resolve(self, kind: Kind, ref: str) -> Any:
        """An object by exact ID, by name (hostname for nodes), or by unique ID prefix."""
        word = _KIND_WORD[kind]
        if not ref:
            raise InvalidSpec(f"a {word} name or ID is required")
        obj = self.cache.get(kind, ref)
        if obj is not None:
            return obj
        if kind in (Kind.SERVICE, Kind.NETWORK):
            object_id = self.cache.id_by_name(kind, ref)
            if object_id is not None:
                return self.cache.get(kind, object_id)
        elif kind == Kind.NODE:
            named = [n for n in self.cache.list_objects(kind) if n.description.hostname == ref]
            if len(named) == 1:
                return named[0]
            if len(named) > 1:
                raise InvalidSpec(f"{len(named)} nodes are named {ref!r}: use the node ID")
        matches = [i for i in self.cache.ids(kind) if i.startswith(ref)]
        if len(matches) == 1:
            return self.cache.get(kind, matches[0])
        if len(matches) > 1:
            raise InvalidSpec(f"{ref!r} matches {len(matches)} {word}s: use more of the ID")
        raise NotFound(f"{word} {ref!r} not found")

    async def _resolve_or_abort(self, kind: Kind, ref: str, context: Any) -> Any:
        """For streaming RPCs (the `rpc` decorator covers unary ones): object or abort."""
        try:
            await self.cache.sync()
            return self.resolve(kind, ref)
        except Exception as err:
            code = _status(err)
            if code is None:
                raise
            await context.abort(code, str(err))
            return None

    def cluster(self) -> pb.Cluster:
        clusters = self.cache.list_objects(Kind.CLUSTER)
        if not clusters:
            raise Unavailable("the cluster is not initialised yet")
        return clusters[0]  # type: ignore[no-any-return]

    def service_info(self, service: pb.Service) -> api.ServiceInfo:
        desired = running = updated = 0
        for t in self.cache.tasks_of_service(service.id):
            if t.desired_state == pb.RUNNING:
                desired += 1
                if t.status.state == pb.RUNNING:
                    running += 1
                    updated += is_current(t, service) and ready_for_update(t)
        return api.ServiceInfo(
            service=service, desired=desired, running=running, running_updated=updated
        )

    # ------------------------------------------------------------ services

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
        return out

    @rpc
    async def CreateService(
        self, request: api.CreateServiceRequest, context: Any
    ) -> api.CreateServiceResponse:
        await self.cache.sync()
        spec = self._prepare_spec(request.spec)
        if self.cache.id_by_name(Kind.SERVICE, spec.annotations.name):
            raise AlreadyExists(f"service {spec.annotations.name!r} already exists")
        service = pb.Service(id=new_id(), spec=spec, spec_version=1)
        endpoints.allocate(service, self.cache, self.cluster())
        await self.store.create(service)
        return api.CreateServiceResponse(service=api.ServiceInfo(service=service))

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
        updated = pb.Service()
        updated.CopyFrom(current)
        updated.spec.CopyFrom(spec)
        updated.previous_spec.CopyFrom(current.spec)
        endpoints.allocate(updated, self.cache, self.cluster())
        # Only a new task spec means new tasks; a replica count change does not.
        if spec.task != current.spec.task:
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
        return api.UpdateServiceResponse(service=self.service_info(updated))

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
        service: pb.Service | None = await self._resolve_or_abort(
            Kind.SERVICE, request.ref, context
        )
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
        tasks = sorted(
            self.cache.tasks_of_service(service_id),
            key=lambda t: t.status.timestamp_ms,
            reverse=True,
        )
        errors: list[str] = []
        for t in tasks:
            failed = t.status.state in (pb.FAILED, pb.REJECTED)
            if t.status.err and (t.desired_state == pb.RUNNING or failed):
                err = t.status.err
                if err not in errors:
                    errors.append(err)
            if len(errors) >= MAX_TASK_ERRORS:
                break
        return api.WatchServiceResponse(service=self.service_info(service), task_errors=errors)

    async def ServiceLogs(
        self, request: api.ServiceLogsRequest, context: Any
    ) -> AsyncIterator[api.ServiceLogsResponse]:
        service: pb.Service | None = await self._resolve_or_abort(
            Kind.SERVICE, request.ref, context
        )
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
            for p in pumps:
                p.cancel()

    # ------------------------------------------------------------ tasks

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

    # ------------------------------------------------------------ nodes

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
        # Its tasks are rescheduled by the orchestrator (their node is gone).
        await self.store.delete(node)
        return api.RemoveNodeResponse(id=node.id)

    # ------------------------------------------------------------ networks

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

    # ------------------------------------------------------------ cluster

    @rpc
    async def GetCluster(
        self, request: api.GetClusterRequest, context: Any
    ) -> api.GetClusterResponse:
        await self.cache.sync()
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
    return out
