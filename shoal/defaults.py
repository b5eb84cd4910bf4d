"""Defaults of the service and cluster specs (SwarmKit's values).

Shared by the manager, which fills in whatever a request leaves unset, and by
swarmctl, which starts from these when a flag changes one field of a group.
Free of protobuf at import (the functions that build messages load it): swarmctl's
service commands use the JSON forms and never load protobuf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.proto import objects_pb2 as pb

RESTART_DELAY_MS = 5_000
STOP_GRACE_PERIOD_MS = 10_000
UPDATE_PARALLELISM = 1
UPDATE_MONITOR_MS = 5_000
# Swarm's. A dead agent is noticed much sooner: its session ends (connection
# closed, or gRPC keepalive finds the peer gone) and the node is down 3 s later.
# Heartbeats only catch an agent that is connected but hung.
HEARTBEAT_PERIOD_MS = 5_000
HEARTBEAT_MISSES = 3
TASK_HISTORY_LIMIT = 5
NODE_CERT_EXPIRY_MS = 90 * 24 * 3600 * 1000
MAX_REPLICAS = 100_000
# Services' virtual IPs: kept out of the networks' 10/8 subnet pool.
VIP_RANGE = "10.255.0.0/16"
# A stopping task is out of DNS and load balancers this long before its SIGTERM.
ENDPOINT_DRAIN_MS = 2_000


# The groups' defaults in the specs' JSON form (swarmctl/spec.py); the messages
# below are made from these, so the two cannot differ.
def restart_policy_json() -> dict[str, Any]:
    return {"condition": "ANY", "delay_ms": RESTART_DELAY_MS}


def update_config_json() -> dict[str, Any]:
    return {
        "parallelism": UPDATE_PARALLELISM,
        "failure_action": "PAUSE",
        "order": "STOP_FIRST",
        "monitor_ms": UPDATE_MONITOR_MS,
    }


def restart_policy() -> pb.RestartPolicy:
    from google.protobuf import json_format

    from shoal.proto import objects_pb2 as pb

    return json_format.ParseDict(restart_policy_json(), pb.RestartPolicy())


def update_config() -> pb.UpdateConfig:
    from google.protobuf import json_format

    from shoal.proto import objects_pb2 as pb

    return json_format.ParseDict(update_config_json(), pb.UpdateConfig())


def cluster_spec(name: str = "default") -> pb.ClusterSpec:
    from shoal.proto import objects_pb2 as pb

    return pb.ClusterSpec(
        annotations=pb.Annotations(name=name),
        dispatcher=pb.DispatcherConfig(
            heartbeat_period_ms=HEARTBEAT_PERIOD_MS, heartbeat_misses=HEARTBEAT_MISSES
        ),
        orchestration=pb.OrchestrationConfig(task_history_limit=TASK_HISTORY_LIMIT),
        ca=pb.CAConfig(node_cert_expiry_ms=NODE_CERT_EXPIRY_MS),
    )


def heartbeat_window_ms(spec: pb.DispatcherConfig, period_ms: int = 0) -> int:
    """How long a node may stay silent before it is down: period x misses.

    `period_ms` is the period the node was actually given (a manager may
    stretch the cluster's); 0 means the cluster's.
    """
    period = period_ms or spec.heartbeat_period_ms or HEARTBEAT_PERIOD_MS
    return period * (spec.heartbeat_misses or HEARTBEAT_MISSES)


def fill_service_spec(spec: pb.ServiceSpec) -> None:
    """Fills the groups a request left out with their defaults, in place."""
    if not spec.task.HasField("restart"):
        spec.task.restart.CopyFrom(restart_policy())
    if not spec.HasField("update"):
        spec.update.CopyFrom(update_config())
    if spec.task.container.stop_grace_period_ms == 0:
        spec.task.container.stop_grace_period_ms = STOP_GRACE_PERIOD_MS
    if spec.WhichOneof("mode") is None:
        spec.replicated.replicas = 1
