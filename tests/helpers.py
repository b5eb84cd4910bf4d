"""Shared test helpers: objects, and waiting on the cache without polling."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from shoal.clock import now_ms
from shoal.manager.controlapi.cluster import RECONCILER_KEY
from shoal.manager.ids import new_id
from shoal.manager.store import Cache, Kind
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb


def make_node(
    hostname: str,
    labels: dict[str, str] | None = None,
    state: pb.NodeState.ValueType = pb.NODE_READY,
    role: pb.NodeRole.ValueType = pb.ROLE_WORKER,
) -> pb.Node:
    node = pb.Node(id=new_id(), role=role)
    node.description.hostname = hostname
    node.spec.labels.update(labels or {})
    node.status.state = state
    node.status.heartbeat_at_ms = now_ms()
    return node


def service_spec(
    name: str,
    replicas: int | None = 1,
    image: str = "busybox:latest",
    constraints: list[str] | None = None,
) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name=name))
    if replicas is None:
        spec.__getattribute__("global").SetInParent()
    else:
        spec.replicated.replicas = replicas
    spec.task.container.image = image
    spec.task.placement.constraints.extend(constraints or [])
    return spec


def live(cache: Cache, service_id: str) -> list[pb.Task]:
    return [
        t
        for t in cache.tasks_of_service(service_id)
        if t.desired_state == pb.RUNNING and t.status.state <= pb.RUNNING
    ]


def spread(cache: Cache, service_id: str) -> Counter[str]:
    """Live, assigned tasks per node hostname."""
    out: Counter[str] = Counter()
    for t in live(cache, service_id):
        if t.node_id:
            node = cache.get(Kind.NODE, t.node_id)
            out[node.description.hostname if node else t.node_id] += 1
    return out


async def until(cache: Cache, predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Waits until predicate() holds, re-checking on every cache change (no polling)."""
    with cache.subscribe() as sub:

        async def wait() -> None:
            while not predicate():
                await sub.next()

        try:
            await asyncio.wait_for(wait(), limit_s)
        except TimeoutError:
            raise AssertionError(f"condition not met within {limit_s}s") from None


async def eventually(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Waits until predicate() holds, for in-process state with no change feed to
    follow (an agent's runners, a simulated runtime): checked every 10 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {limit_s}s")
        await asyncio.sleep(0.01)


def wait_idle(control: api_grpc.ControlStub, limit_s: float = 30.0) -> None:
    """Blocks until the leader (reached through `control`) has acted on every change up
    to now: what a "nothing more changes" check waits for, instead of a sleep."""
    deadline = time.monotonic() + limit_s
    while True:
        _, call = control.GetCluster.with_call(api.GetClusterRequest(), timeout=10)
        if dict(call.trailing_metadata() or ()).get(RECONCILER_KEY) == "idle":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the leader was not idle within {limit_s}s")
        time.sleep(0.05)  # no watch on the reconciler's state: a short poll
