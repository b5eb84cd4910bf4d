"""Flags to the node, network and cluster specs (commands that stay on gRPC).

Service specs are spec.py's, in their JSON form; these are messages.
Bad values raise ValueError with a sentence the user can act on (exit 1).
"""

from __future__ import annotations

from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import parse


def node_spec(
    current: pb.NodeSpec,
    availability: str | None,
    label_add: list[tuple[str, str]],
    label_rm: tuple[str, ...],
) -> pb.NodeSpec:
    """`node update`: the labels come parsed, so bad ones fail before any request."""
    spec = pb.NodeSpec()
    spec.CopyFrom(current)
    if availability is not None:
        spec.availability = pb.NodeAvailability.Value(parse.availability(availability))
    for key in label_rm:
        spec.labels.pop(key, None)
    for key, value in label_add:
        spec.labels[key] = value
    return spec


def network_spec(
    name: str, driver: str, subnet: str, labels: tuple[str, ...], internal: bool = False
) -> pb.NetworkSpec:
    spec = pb.NetworkSpec(
        annotations=pb.Annotations(name=name), driver=driver, subnet=subnet, internal=internal
    )
    for item in labels:
        key, value = parse.key_value(item, "label")
        spec.annotations.labels[key] = value
    return spec


def cluster_spec(
    current: pb.ClusterSpec,
    heartbeat_period: str | None,
    heartbeat_misses: int | None,
    task_history_limit: int | None,
    cert_expiry: str | None,
    rebalance: bool | None,
    vip_range: str | None = None,
) -> pb.ClusterSpec:
    """`cluster update`: only the flags given change."""
    spec = pb.ClusterSpec()
    spec.CopyFrom(current)
    if heartbeat_period is not None:
        spec.dispatcher.heartbeat_period_ms = parse.duration_ms(heartbeat_period)
    if heartbeat_misses is not None:
        spec.dispatcher.heartbeat_misses = heartbeat_misses
    if task_history_limit is not None:
        spec.orchestration.task_history_limit = task_history_limit
    if cert_expiry is not None:
        spec.ca.node_cert_expiry_ms = parse.duration_ms(cert_expiry)
    if rebalance is not None:
        spec.orchestration.rebalance = rebalance
    if vip_range is not None:
        spec.vip_range = vip_range
    return spec
