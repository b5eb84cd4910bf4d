"""Fuzzing the control API with hypothesis: a real etcd, the real ControlAPI served over
gRPC on a unix socket (on its own event loop in a thread, so the test can be a plain
hypothesis test), random and mutated ServiceSpec/NetworkSpec/NodeSpec/ClusterSpec
requests. Properties: the server never fails with INTERNAL/UNKNOWN (a crash) and keeps
answering; every refusal is one line; a refused request leaves etcd's revision where it
was; what is accepted is valid when read back.

Nothing else writes to this etcd (no reconciler, no dispatcher), so the revision is an
exact witness. The run is bounded (a few hundred requests, well under a minute)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.manager.controlapi import ControlAPI
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.manager import ensure_cluster
from shoal.manager.store import Cache, EtcdConnection, Keys, Store
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

from .controlapi_strategies import (
    INT32,
    INT64,
    WILD_TEXT,
    assert_sane_cluster,
    assert_sane_node,
    assert_sane_service,
    cluster_specs,
    mutate_bytes,
    network_specs,
    node_specs,
    safe_image,
    service_specs,
)
from .helpers import make_node

pytestmark = pytest.mark.integration

T = TypeVar("T")
# What a refusal may be; INTERNAL or UNKNOWN is an exception the API did not map.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
NETWORKS = ("front", "back")
# This network, loopback, link-local, multicast, reserved: never an overlay's subnet.
SPECIAL = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
# CI runs a bounded number of examples; SHOAL_FUZZ_EXAMPLES=2000 for a long run on demand.
FUZZ = settings(
    max_examples=int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "80")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Harness:
    """etcd, a store, a cache and the ControlAPI, on an event loop of their own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.socket = tmp / "control.sock"
        self.etcd = EmbeddedEtcd(tmp / "etcd")
        self.store: Store | None = None
        self.cache: Cache | None = None
        self.server: grpc.aio.Server | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        await self.etcd.start()
        tls = self.etcd.tls
        self.store = Store(EtcdConnection([self.etcd.endpoint], tls), Keys(f"/f-{uuid.uuid4()}"))
        await ensure_cluster(self.store)
        self.cache = Cache(self.store)
        await self.cache.start()
        self.server = grpc.aio.server()
        api_grpc.add_ControlServicer_to_server(ControlAPI(self.store, self.cache), self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        await self.server.start()

    def revision(self) -> int:
        assert self.store is not None
        return self.run(self.store.revision())

    def add_node(self, node: pb.Node) -> None:
        assert self.store is not None
        self.run(self.store.create(node))

    def stop(self) -> None:
        async def down() -> None:
            if self.server is not None:
                await self.server.stop(grace=1)
            if self.cache is not None:
                await self.cache.stop()
            if self.store is not None:
                await self.store.close()
            await self.etcd.stop()

        try:
            self.run(down())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    h.start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def control(harness: Harness) -> Iterator[api_grpc.ControlStub]:
    with grpc.insecure_channel(f"unix:{harness.socket}") as channel:
        stub = api_grpc.ControlStub(channel)
        for name in NETWORKS:
            stub.CreateNetwork(
                api.CreateNetworkRequest(spec=pb.NetworkSpec(annotations=pb.Annotations(name=name)))
            )
        for i in range(2):
            harness.add_node(make_node(f"n{i}", {"zone": "a"}))
        yield stub


def call(harness: Harness, control: api_grpc.ControlStub, rpc: Callable[[], T]) -> T | None:
    """The response, or None for a refusal that wrote nothing; fails on anything else."""
    before = harness.revision()
    try:
        return rpc()
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        assert code in REFUSALS, f"{code}: {details}"
        assert details and "\n" not in details, f"refusal not one line: {details!r}"
        assert harness.revision() == before, f"refused ({details}) but etcd changed"
        return None
    finally:
        # The server still answers.
        control.GetCluster(api.GetClusterRequest(), timeout=10)


@FUZZ
@given(spec=service_specs(NETWORKS))
def test_create_service(harness: Harness, control: api_grpc.ControlStub, spec: Any) -> None:
    got = call(
        harness,
        control,
        lambda: control.CreateService(api.CreateServiceRequest(spec=spec), timeout=30),
    )
    if got is not None:
        assert_sane_service(got.service.service.spec)
        stored = control.GetService(api.GetServiceRequest(ref=got.service.service.id))
        assert stored.service.service.spec == got.service.service.spec


@FUZZ
@given(data=st.data())
def test_update_service(harness: Harness, control: api_grpc.ControlStub, data: Any) -> None:
    services = control.ListServices(api.ListServicesRequest()).services
    ref = data.draw(
        st.one_of(st.sampled_from([s.service.spec.annotations.name for s in services]), WILD_TEXT)
        if services
        else WILD_TEXT
    )
    spec = data.draw(service_specs(NETWORKS))
    by_name = {s.service.spec.annotations.name: s.service for s in services}
    if ref in by_name and data.draw(st.booleans()):
        spec.annotations.name = ref  # mostly a valid update of an existing service
    request = api.UpdateServiceRequest(
        ref=ref,
        spec=spec,
        version=data.draw(st.one_of(st.just(0), INT64)),
        rollback=data.draw(st.integers(0, 4)) == 0,
        force=data.draw(st.booleans()),
    )
    got = call(harness, control, lambda: control.UpdateService(request, timeout=30))
    if got is not None:
        assert_sane_service(got.service.service.spec)


@FUZZ
@given(spec=network_specs())
def test_create_network(harness: Harness, control: api_grpc.ControlStub, spec: Any) -> None:
    got = call(
        harness,
        control,
        lambda: control.CreateNetwork(api.CreateNetworkRequest(spec=spec), timeout=30),
    )
    if got is not None:
        subnet = ipaddress.IPv4Network(got.network.subnet)
        assert not any(subnet.overlaps(ipaddress.IPv4Network(s)) for s in SPECIAL), subnet
        gateway = ipaddress.IPv4Address(got.network.gateway)
        assert gateway in subnet and gateway not in (
            subnet.network_address,
            subnet.broadcast_address,
        )


@FUZZ
@given(data=st.data())
def test_update_node(harness: Harness, control: api_grpc.ControlStub, data: Any) -> None:
    nodes = control.ListNodes(api.ListNodesRequest()).nodes
    node = data.draw(st.sampled_from(nodes))
    ref = data.draw(st.one_of(st.sampled_from([node.id, node.description.hostname]), WILD_TEXT))
    request = api.UpdateNodeRequest(ref=ref, spec=data.draw(node_specs(node.spec)))
    got = call(harness, control, lambda: control.UpdateNode(request, timeout=30))
    if got is not None:
        assert_sane_node(got.node)


@FUZZ
@given(data=st.data())
def test_update_cluster_and_tokens(
    harness: Harness, control: api_grpc.ControlStub, data: Any
) -> None:
    current = control.GetCluster(api.GetClusterRequest()).cluster
    spec = data.draw(cluster_specs(current.spec))
    got = call(
        harness,
        control,
        lambda: control.UpdateCluster(api.UpdateClusterRequest(spec=spec), timeout=30),
    )
    if got is not None:
        assert_sane_cluster(got.cluster.spec)
    role = data.draw(st.one_of(st.sampled_from([0, 1]), INT32))
    call(
        harness,
        control,
        lambda: control.RotateJoinToken(api.RotateJoinTokenRequest(role=role), timeout=30),
    )


@FUZZ
@given(data=st.data())
def test_mutated_bytes(harness: Harness, control: api_grpc.ControlStub, data: Any) -> None:
    """Valid requests with bytes flipped, dropped or inserted: whatever still parses as
    the request message (odd enums, unknown fields, cut strings) must be refused or
    accepted cleanly."""
    kind = data.draw(st.sampled_from(["service", "network", "node", "cluster"]))
    sent: Any
    if kind == "service":
        sent = api.CreateServiceRequest(spec=data.draw(service_specs(NETWORKS)))
    elif kind == "network":
        sent = api.CreateNetworkRequest(spec=data.draw(network_specs()))
    elif kind == "node":
        node = control.ListNodes(api.ListNodesRequest()).nodes[0]
        sent = api.UpdateNodeRequest(ref=node.id, spec=node.spec)
    else:
        current = control.GetCluster(api.GetClusterRequest()).cluster
        sent = api.UpdateClusterRequest(spec=current.spec)
    raw = mutate_bytes(sent.SerializeToString(), data.draw)
    request = type(sent)()
    try:
        request.ParseFromString(raw)
    except Exception:  # not a message any client could send: nothing to test
        return
    if kind == "service":
        request.spec.task.container.image = safe_image(request.spec.task.container.image)
    method = {
        "service": control.CreateService,
        "network": control.CreateNetwork,
        "node": control.UpdateNode,
        "cluster": control.UpdateCluster,
    }[kind]
    got = call(harness, control, lambda: method(request, timeout=30))
    if got is not None and kind == "node":
        assert_sane_node(got.node)
    elif got is not None and kind == "cluster":
        assert_sane_cluster(got.cluster.spec)


def test_unknown_refs_refused(harness: Harness, control: api_grpc.ControlStub) -> None:
    """Refs nothing has: refused with one line (a 10 KB ref too: gRPC details travel in a
    header of 8 KiB), nothing written."""
    requests: list[tuple[Callable[..., Any], Callable[[str], Any]]] = [
        (control.RemoveService, lambda r: api.RemoveServiceRequest(ref=r)),
        (control.RemoveNetwork, lambda r: api.RemoveNetworkRequest(ref=r)),
        (control.RemoveNode, lambda r: api.RemoveNodeRequest(ref=r)),
        (control.GetTask, lambda r: api.GetTaskRequest(ref=r)),
        (control.ListTasks, lambda r: api.ListTasksRequest(service_ref=r, node_ref=r)),
        (control.UpdateService, lambda r: api.UpdateServiceRequest(ref=r)),
    ]
    for ref in ("nope", "\x1b[2J", "x" * 10_000):
        for method, build in requests:
            request = build(ref)
            assert call(harness, control, lambda m=method, q=request: m(q, timeout=10)) is None


Case = tuple[Callable[..., Any], Any, str]


def assert_refused(harness: Harness, cases: list[Case]) -> None:
    for method, request, message in cases:
        before = harness.revision()
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in (err.value.details() or ""), err.value.details()
        assert harness.revision() == before, f"{message}: etcd changed"


def bad_service(edit: Callable[[pb.ServiceSpec], object]) -> api.CreateServiceRequest:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name="bad"))
    spec.task.container.image = "127.0.0.1:9/app"
    edit(spec)
    return api.CreateServiceRequest(spec=spec)


def test_known_bad_services_refused_and_nothing_written(
    harness: Harness, control: api_grpc.ControlStub
) -> None:
    """The values the issue measured or named, one by one through the real API."""
    c = control.CreateService
    assert_refused(
        harness,
        [
            (
                c,
                bad_service(
                    lambda s: s.task.container.healthcheck.__setattr__("interval_ms", -1000)
                ),
                "health check interval cannot be negative",
            ),
            (
                c,
                bad_service(lambda s: s.task.limits.__setattr__("nano_cpus", 1_000_000)),
                "at least 0.01 CPU",
            ),
            (
                c,
                bad_service(lambda s: s.task.container.__setattr__("stop_grace_period_ms", -1)),
                "stop grace period cannot be negative",
            ),
            (
                c,
                bad_service(lambda s: s.task.restart.__setattr__("condition", 42)),
                "unknown restart condition 42",
            ),
            (
                c,
                bad_service(
                    lambda s: s.task.container.env.extend(f"K{i}=" + "v" * 1000 for i in range(300))
                ),
                "service spec is too large",
            ),
            (c, bad_service(lambda s: s.task.container.env.append("K\x1b[2J=1")), "invalid env"),
        ],
    )


def test_known_bad_networks_nodes_cluster_refused_and_nothing_written(
    harness: Harness, control: api_grpc.ControlStub
) -> None:
    node = control.ListNodes(api.ListNodesRequest()).nodes[0]
    cluster = control.GetCluster(api.GetClusterRequest()).cluster

    def node_spec(**fields: int) -> api.UpdateNodeRequest:
        spec = pb.NodeSpec()
        spec.CopyFrom(node.spec)
        for name, value in fields.items():
            setattr(spec, name, value)
        return api.UpdateNodeRequest(ref=node.id, spec=spec)

    def cluster_spec(heartbeat: int) -> api.UpdateClusterRequest:
        spec = pb.ClusterSpec()
        spec.CopyFrom(cluster.spec)
        spec.dispatcher.heartbeat_period_ms = heartbeat
        return api.UpdateClusterRequest(spec=spec)

    def network(name: str, subnet: str) -> api.CreateNetworkRequest:
        return api.CreateNetworkRequest(
            spec=pb.NetworkSpec(annotations=pb.Annotations(name=name), subnet=subnet)
        )

    assert_refused(
        harness,
        [
            (control.CreateNetwork, network("lo", "127.0.0.0/16"), "reserved"),
            (control.CreateNetwork, network("all", "0.0.0.0/0"), "reserved"),
            (control.UpdateNode, node_spec(availability=7), "unknown availability 7"),
            (control.UpdateNode, node_spec(desired_role=pb.ROLE_MANAGER), "role"),
            (control.UpdateCluster, cluster_spec(-5), "heartbeat period"),
            (control.RotateJoinToken, api.RotateJoinTokenRequest(role=5), "unknown node role 5"),
        ],
    )
