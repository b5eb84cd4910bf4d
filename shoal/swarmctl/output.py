"""What swarmctl prints: the JSON views (the stable contract) and human tables."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb


def state_name(state: int) -> str:
    return str(pb.TaskState.Name(state)).lower()  # type: ignore[arg-type]


def node_status(state: int) -> str:
    return str(pb.NodeState.Name(state)).removeprefix("NODE_").lower()  # type: ignore[arg-type]


def availability(value: int) -> str:
    name = pb.NodeAvailability.Name(value)  # type: ignore[arg-type]
    return str(name).removeprefix("AVAILABILITY_").lower()


def role(value: int) -> str:
    return "manager" if value == pb.ROLE_MANAGER else "worker"


def iso(ms: int) -> str | None:
    if not ms:
        return None
    return (
        datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def ago(ms: int) -> str:
    if not ms:
        return ""
    secs = max(0, int(datetime.datetime.now(datetime.UTC).timestamp() - ms / 1000))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def _ports(ports: Sequence[pb.PortConfig]) -> list[dict[str, Any]]:
    return [
        {
            "published": p.published_port,
            "target": p.target_port,
            "protocol": "udp" if p.protocol == pb.PortConfig.UDP else "tcp",
        }
        for p in ports
    ]


def service_view(info: api.ServiceInfo, net_names: dict[str, str]) -> dict[str, Any]:
    svc = info.service
    spec = svc.spec
    mode = spec.WhichOneof("mode") or "replicated"
    c = spec.task.container
    return {
        "id": svc.id,
        "name": spec.annotations.name,
        "image": c.image,
        "mode": mode,
        "replicas": int(spec.replicated.replicas) if mode == "replicated" else None,
        "running": int(info.running),
        "desired": int(info.desired),
        "networks": [net_names.get(n.target, n.target) for n in spec.task.networks],
        "ports": _ports(spec.ports),
        "version": int(svc.meta.version),
        "labels": dict(spec.annotations.labels),
        "command": list(c.command),
        "args": list(c.args),
        "env": list(c.env),
        "user": c.user,
        "constraints": list(spec.task.placement.constraints),
        "restart_condition": pb.RestartPolicy.Condition.Name(spec.task.restart.condition)
        .lower()
        .replace("_", "-"),
        "restart_delay_ms": int(spec.task.restart.delay_ms),
        "update_parallelism": int(spec.update.parallelism),
        "update_state": pb.UpdateStatus.State.Name(svc.update_status.state).lower()
        if svc.HasField("update_status")
        else None,
        "created_at": iso(svc.meta.created_at_ms),
        "updated_at": iso(svc.meta.updated_at_ms),
    }


def task_view(t: pb.Task, hostnames: dict[str, str]) -> dict[str, Any]:
    return {
        "id": t.id,
        "service": t.service_id,
        "service_name": t.service_name,
        "slot": int(t.slot),
        "node": t.node_id or None,
        "node_hostname": hostnames.get(t.node_id) if t.node_id else None,
        "desired_state": state_name(t.desired_state),
        "state": state_name(t.status.state),
        "message": t.status.message,
        "error": t.status.err,
        "image": t.spec.container.image,
        "addresses": [a for n in t.networks for a in n.addresses],
        "container_id": t.status.container.container_id,
        "exit_code": int(t.status.container.exit_code)
        if t.status.state in (pb.COMPLETE, pb.FAILED, pb.SHUTDOWN)
        else None,
        "updated_at": iso(t.status.timestamp_ms),
    }


def node_view(n: pb.Node) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": n.id,
        "hostname": n.description.hostname,
        "role": role(n.role),
        "status": node_status(n.status.state),
        "availability": availability(n.spec.availability),
        "addr": n.status.addr,
        "labels": dict(n.spec.labels),
        "message": n.status.message,
        "runtime": n.description.runtime,
        "cpus": n.description.resources.nano_cpus / 1e9,
        "memory_bytes": int(n.description.resources.memory_bytes),
    }
    if n.HasField("manager_status"):
        view["manager_status"] = {
            "addr": n.manager_status.addr,
            "leader": n.manager_status.leader,
            "reachable": n.manager_status.reachable,
        }
    return view


def network_view(n: pb.Network) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.spec.annotations.name,
        "driver": n.spec.driver,
        "subnet": n.subnet or n.spec.subnet,
        "gateway": n.gateway,
        "vni": int(n.vni),
        "labels": dict(n.spec.annotations.labels),
        "created_at": iso(n.meta.created_at_ms),
    }


def cluster_view(c: pb.Cluster) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.spec.annotations.name,
        "created_at": iso(c.meta.created_at_ms),
        "heartbeat_period_ms": int(c.spec.dispatcher.heartbeat_period_ms),
        "heartbeat_misses": int(c.spec.dispatcher.heartbeat_misses),
        "task_history_limit": int(c.spec.orchestration.task_history_limit),
        "node_cert_expiry_ms": int(c.spec.ca.node_cert_expiry_ms),
        "ca_digest": c.root_ca.ca_digest,
    }


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Aligned columns; plain text, so it reads the same piped or on a terminal."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")
