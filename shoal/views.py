"""The JSON views of the API's objects: the shapes of CONTRACT.md.

Plain dicts with snake_case keys and lower-case states, made from the protobuf
objects. Both sides use them: swarmctl (for what it reads over gRPC) and the
manager's HTTP/JSON socket (shoal/manager/restapi.py), which serves them to
swarmctl's read commands and to scripts, so a client needs neither gRPC nor
protobuf to read.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shoal import defaults
from shoal.proto import objects_pb2 as pb

if TYPE_CHECKING:
    from shoal.proto import control_pb2 as api

# ---------------------------------------------------------------- enum names


def task_state(state: pb.TaskState.ValueType) -> str:
    return pb.TaskState.Name(state).lower()


def node_status(state: pb.NodeState.ValueType) -> str:
    return pb.NodeState.Name(state).removeprefix("NODE_").lower()


def availability(value: pb.NodeAvailability.ValueType) -> str:
    return pb.NodeAvailability.Name(value).removeprefix("AVAILABILITY_").lower()


def role(value: pb.NodeRole.ValueType) -> str:
    return pb.NodeRole.Name(value).removeprefix("ROLE_").lower()


def _flag_name(name: str) -> str:
    """`ON_FAILURE` -> `on-failure`: the spelling the flags take."""
    return name.lower().replace("_", "-")


# ---------------------------------------------------------------- times


def iso(ms: int) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC; None when unset."""
    if not ms:
        return None
    stamp = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- JSON views


def ports_view(ports: Sequence[pb.PortConfig]) -> list[dict[str, Any]]:
    return [
        {
            "published": int(p.published_port),
            "target": int(p.target_port),
            "protocol": "udp" if p.protocol == pb.PortConfig.UDP else "tcp",
            "mode": "host" if p.mode == pb.PortConfig.HOST else "ingress",
        }
        for p in ports
    ]


def endpoint_view(svc: pb.Service, network_names: Mapping[str, str]) -> dict[str, Any]:
    return {
        "mode": "dnsrr" if svc.spec.endpoint_mode == pb.ENDPOINT_DNSRR else "vip",
        "virtual_ips": [
            {"network": network_names.get(v.network_id, v.network_id), "addr": v.addr}
            for v in svc.endpoint.virtual_ips
        ],
    }


def _resources(r: pb.Resources) -> dict[str, Any]:
    return {"cpus": r.nano_cpus / 1e9, "memory_bytes": int(r.memory_bytes)}


def want(info: api.ServiceInfo) -> int:
    """Tasks the service should run: its replicas, or for global what the manager wants."""
    spec = info.service.spec
    if spec.WhichOneof("mode") == "global":
        return int(info.desired)
    return int(spec.replicated.replicas)


# The label stacks put on what they create (Swarm's own, so tooling reads it).
STACK_LABEL = "com.docker.stack.namespace"


def _file_ref(r: pb.FileReference) -> dict[str, Any]:
    return {
        "name": r.name,
        "id": r.id,
        "secret_version": int(r.version),
        "pinned": r.pinned,
        "target": r.target,
        "uid": int(r.uid),
        "gid": int(r.gid),
        "mode": f"{r.mode:04o}",
    }


def service_view(info: api.ServiceInfo, network_names: Mapping[str, str]) -> dict[str, Any]:
    svc = info.service
    spec = svc.spec
    task = spec.task
    c = task.container
    mode = "global" if spec.WhichOneof("mode") == "global" else "replicated"
    restart, update = task.restart, spec.update
    status = svc.update_status
    return {
        "id": svc.id,
        "name": spec.annotations.name,
        "image": c.image,
        "mode": mode,
        "replicas": int(spec.replicated.replicas) if mode == "replicated" else None,
        "running": int(info.running),
        "desired": int(info.desired),
        "running_updated": int(info.running_updated),
        "networks": [network_names.get(n.target, n.target) for n in task.networks],
        # The allocated ports (published ports picked by the manager filled in).
        "ports": ports_view(svc.endpoint.ports if svc.HasField("endpoint") else spec.ports),
        "endpoint": endpoint_view(svc, network_names),
        "version": int(svc.meta.version),
        "spec_version": int(svc.spec_version),
        "labels": dict(spec.annotations.labels),
        "command": list(c.command),
        "args": list(c.args),
        "env": list(c.env),
        "user": c.user,
        "workdir": c.dir,
        "mounts": [
            {
                "type": "bind" if m.type == pb.Mount.BIND else "volume",
                "source": m.source,
                "target": m.target,
                "readonly": m.readonly,
            }
            for m in c.mounts
        ],
        "healthcheck": list(c.healthcheck.test),
        "stop_grace_period_ms": int(c.stop_grace_period_ms),
        "constraints": list(task.placement.constraints),
        "max_replicas_per_node": int(task.placement.max_replicas_per_node),
        "rebalance": spec.rebalance,
        "secrets": [_file_ref(r) for r in c.secrets],
        "configs": [_file_ref(r) for r in c.configs],
        "stack": spec.annotations.labels.get(STACK_LABEL),
        "limits": _resources(task.limits),
        "reservations": _resources(task.reservations),
        "restart_policy": {
            "condition": _flag_name(pb.RestartPolicy.Condition.Name(restart.condition)),
            "delay_ms": int(restart.delay_ms),
            "max_attempts": int(restart.max_attempts),
            "window_ms": int(restart.window_ms),
        },
        "update_config": {
            "parallelism": int(update.parallelism),
            "delay_ms": int(update.delay_ms),
            "failure_action": _flag_name(pb.UpdateConfig.FailureAction.Name(update.failure_action)),
            "order": _flag_name(pb.UpdateConfig.Order.Name(update.order)),
            "monitor_ms": int(update.monitor_ms),
        },
        "update_status": {
            "state": pb.UpdateStatus.State.Name(status.state).lower(),
            "message": status.message,
            "started_at": iso(status.started_at_ms),
            "completed_at": iso(status.completed_at_ms),
        }
        if svc.HasField("update_status")
        else None,
        "created_at": iso(svc.meta.created_at_ms),
        "updated_at": iso(svc.meta.updated_at_ms),
    }


def progress_view(progress: api.WatchServiceResponse) -> dict[str, Any]:
    """One step of a service converging (WatchService's answer), what swarmctl needs to
    draw its progress bar and decide it is done: a line of GET /services/REF/watch."""
    if progress.removed:
        return {"removed": True}
    info = progress.service
    spec, status = info.service.spec, info.service.update_status
    return {
        "removed": False,
        "id": info.service.id,
        "name": spec.annotations.name,
        "mode": "global" if spec.WhichOneof("mode") == "global" else "replicated",
        "want": want(info),
        "desired": int(info.desired),
        "running": int(info.running),
        "running_updated": int(info.running_updated),
        "update_parallelism": int(spec.update.parallelism),
        "update_status": {
            "state": pb.UpdateStatus.State.Name(status.state).lower(),
            "message": status.message,
            "started_at_ms": int(status.started_at_ms),
        },
        "task_errors": list(progress.task_errors),
        "task_progress": list(progress.task_progress),
    }


_FINISHED = (pb.COMPLETE, pb.FAILED, pb.SHUTDOWN, pb.REJECTED)


def task_view(t: pb.Task, hostnames: Mapping[str, str]) -> dict[str, Any]:
    finished = t.status.state in _FINISHED and bool(t.status.container.container_id)
    return {
        "id": t.id,
        "service": t.service_id,
        "service_name": t.service_name,
        "slot": int(t.slot),
        "node": t.node_id or None,
        "node_hostname": hostnames.get(t.node_id) if t.node_id else None,
        "desired_state": task_state(t.desired_state),
        "state": task_state(t.status.state),
        "message": t.status.message,
        "error": t.status.err,
        "image": t.spec.container.image,
        "addresses": [a for n in t.networks for a in n.addresses],
        "container_id": t.status.container.container_id,
        "health": {
            pb.HEALTH_STARTING: "starting",
            pb.HEALTH_HEALTHY: "healthy",
            pb.HEALTH_UNHEALTHY: "unhealthy",
        }.get(t.status.health),
        "exit_code": int(t.status.container.exit_code) if finished else None,
        "created_at": iso(t.meta.created_at_ms),
        "updated_at": iso(t.status.timestamp_ms or t.meta.updated_at_ms),
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
        "os": n.description.os,
        "arch": n.description.arch,
        "runtime": n.description.runtime,
        "oci_runtime": n.description.oci_runtime,
        "resources": _resources(n.description.resources),
        "heartbeat_at": iso(n.status.heartbeat_at_ms),
        "created_at": iso(n.meta.created_at_ms),
        "version": int(n.meta.version),
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
        "vni": int(n.vni),
        "gateway": n.gateway,
        "internal": n.spec.internal,
        "labels": dict(n.spec.annotations.labels),
        "created_at": iso(n.meta.created_at_ms),
    }


def cluster_view(c: pb.Cluster) -> dict[str, Any]:
    # Join tokens are left out on purpose: `cluster join-token` prints them.
    return {
        "id": c.id,
        "name": c.spec.annotations.name,
        "created_at": iso(c.meta.created_at_ms),
        "heartbeat_period_ms": int(c.spec.dispatcher.heartbeat_period_ms),
        "heartbeat_misses": int(c.spec.dispatcher.heartbeat_misses),
        "task_history_limit": int(c.spec.orchestration.task_history_limit),
        "rebalance": c.spec.orchestration.rebalance,
        "vip_range": c.spec.vip_range or defaults.VIP_RANGE,
        "node_cert_expiry_ms": int(c.spec.ca.node_cert_expiry_ms),
        "ca_digest": c.root_ca.ca_digest,
        "version": int(c.meta.version),
    }


def join_tokens_view(c: pb.Cluster) -> dict[str, str]:
    return {"worker": c.join_tokens.worker, "manager": c.join_tokens.manager}
