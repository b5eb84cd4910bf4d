"""What swarmctl's tests share: the JSON keys CONTRACT.md promises, and sample objects."""

from __future__ import annotations

from google.protobuf import json_format

from shoal import defaults
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import parse


def make_service(mode: str = "replicated") -> api.ServiceInfo:
    spec = pb.ServiceSpec(annotations=pb.Annotations(name="web", labels={"tier": "front"}))
    spec.task.container.image = "busybox:latest"
    spec.task.container.env.append("A=1")
    spec.task.networks.add(target="net1")
    spec.task.networks.add(target="net-unknown")
    spec.ports.append(json_format.ParseDict(parse.port("8080:80"), pb.PortConfig()))
    spec.ports.append(json_format.ParseDict(parse.port("53:53/udp"), pb.PortConfig()))
    spec.task.placement.constraints.append("node.labels.zone==a")
    if mode == "global":
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = 3
    defaults.fill_service_spec(spec)
    svc = pb.Service(id="s" * 25, spec=spec, spec_version=2)
    svc.meta.version = 42
    svc.meta.created_at_ms = 1_700_000_000_000
    return api.ServiceInfo(service=svc, desired=3, running=2, running_updated=2)


# The keys CONTRACT.md promises (at least these).
SERVICE_KEYS = {
    "id",
    "name",
    "image",
    "mode",
    "replicas",
    "running",
    "networks",
    "ports",
    "version",
}
TASK_KEYS = {
    "id",
    "service",
    "slot",
    "node",
    "node_hostname",
    "desired_state",
    "state",
    "error",
    "image",
    "addresses",
    "container_id",
}
NODE_KEYS = {"id", "hostname", "role", "status", "availability", "addr", "labels"}
NETWORK_KEYS = {"id", "name", "driver", "subnet", "vni"}
CLUSTER_KEYS = {"id", "name", "created_at"}
