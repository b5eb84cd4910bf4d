"""What swarmctl prints: the JSON views (the stable contract) and human tables.

The views are plain dicts with the keys of CONTRACT.md (snake_case, states in
lower case); tables and times are for people and may change.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import click

from shoal import defaults
from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb

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


def duration(ms: int) -> str:
    """5000 -> `5s`, 90000 -> `1m30s`, 500 -> `500ms`: the flags' own spelling."""
    if ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


def ago(ms: int, now_ms: int | None = None) -> str:
    if not ms:
        return ""
    now = (
        now_ms
        if now_ms is not None
        else int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
    )
    secs = max(0, (now - ms) // 1000)
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


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
    ep = svc.endpoint
    return {
        "mode": "dnsrr" if svc.spec.endpoint_mode == pb.ENDPOINT_DNSRR else "vip",
        "virtual_ips": [
            {"network": network_names.get(v.network_id, v.network_id), "addr": v.addr}
            for v in ep.virtual_ips
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


# ---------------------------------------------------------------- table rows

SHORT_ID = 12
SERVICE_HEADERS = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
TASK_HEADERS = ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"]
NODE_HEADERS = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "ROLE", "MANAGER STATUS", "ADDR"]
NETWORK_HEADERS = ["ID", "NAME", "DRIVER", "SUBNET", "VNI"]


def service_rows(views: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for v in views:
        desired = v["replicas"] if v["mode"] == "replicated" else v["desired"]
        ports = ",".join(f"*:{p['published']}->{p['target']}/{p['protocol']}" for p in v["ports"])
        rows.append(
            [
                v["id"][:SHORT_ID],
                v["name"],
                v["mode"],
                f"{v['running']}/{desired}",
                v["image"],
                ports,
            ]
        )
    return rows


def task_rows(
    tasks: Sequence[pb.Task], hostnames: Mapping[str, str], now_ms: int | None = None
) -> list[list[str]]:
    """One group per slot (per node for global services), newest first, older ones `\\_`."""
    groups: dict[tuple[str, int, str], list[pb.Task]] = {}
    for t in tasks:
        key = (t.service_name, int(t.slot), "" if t.slot else t.node_id)
        groups.setdefault(key, []).append(t)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], hostnames.get(k[2], k[2]))):
        group = sorted(
            groups[key], key=lambda t: (t.meta.created_at_ms, t.status.timestamp_ms), reverse=True
        )
        for i, t in enumerate(group):
            name = f"{t.service_name}.{t.slot if t.slot else t.node_id}"
            when = ago(t.status.timestamp_ms, now_ms)
            rows.append(
                [
                    t.id[:SHORT_ID],
                    name if i == 0 else f" \\_ {name}",
                    t.spec.container.image,
                    hostnames.get(t.node_id, t.node_id[:SHORT_ID]),
                    task_state(t.desired_state),
                    f"{task_state(t.status.state)} {when}".rstrip(),
                    t.status.err,
                ]
            )
    return rows


def ports_text(ports: Sequence[pb.PortConfig]) -> str:
    return ",".join(
        f"*:{p['published']}->{p['target']}/{p['protocol']}"
        + (" (host)" if p["mode"] == "host" else "")
        for p in ports_view(ports)
    )


def with_port_views(
    views: list[dict[str, Any]], tasks: Sequence[pb.Task], ports: Sequence[pb.PortConfig]
) -> list[dict[str, Any]]:
    """Task views; the ones meant to run show the service's published ports."""
    for view, t in zip(views, tasks, strict=True):
        view["ports"] = ports_view(ports) if t.desired_state == pb.RUNNING else []
    return views


def with_ports(rows: list[list[str]], tasks: Sequence[pb.Task], svc: pb.Service) -> list[list[str]]:
    """task_rows plus a PORTS column (rows are in task_rows' order, matched by short id)."""
    running = {t.id[:SHORT_ID] for t in tasks if t.desired_state == pb.RUNNING}
    text = ports_text(svc.endpoint.ports)
    return [[*row, text if row[0] in running else ""] for row in rows]


def manager_status(view: Mapping[str, Any]) -> str:
    ms = view.get("manager_status")
    if not ms:
        return ""
    return "leader" if ms["leader"] else ("reachable" if ms["reachable"] else "unreachable")


def node_rows(views: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            v["id"][:SHORT_ID],
            v["hostname"],
            v["status"],
            v["availability"],
            v["role"],
            manager_status(v),
            v["addr"],
        ]
        for v in views
    ]


def network_rows(views: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [[v["id"][:SHORT_ID], v["name"], v["driver"], v["subnet"], str(v["vni"])] for v in views]


# ---------------------------------------------------------------- printing


def print_json(data: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(data, indent=2) + "\n")


_GOOD = {"running", "ready", "active", "complete"}
_BAD = {"failed", "rejected", "down", "drain", "orphaned", "disconnected"}


# Columns whose words are states, coloured on a terminal.
STATE_COLUMNS = {"STATUS", "AVAILABILITY", "DESIRED STATE", "CURRENT STATE"}


def _tint(cell: str) -> str:
    word = cell.split(" ", 1)[0].lower()
    if word in _GOOD:
        return click.style(cell, fg="green")
    if word in _BAD:
        return click.style(cell, fg="red")
    return cell


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], color: bool) -> str:
    """Aligned columns under a header; colours only when asked (a terminal)."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    header = "   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    lines.append(click.style(header, bold=True) if color else header)
    for row in cells:
        # Pad before colouring so escape codes do not count towards the width.
        padded = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        if color:
            padded = [
                _tint(c) if h in STATE_COLUMNS else c for h, c in zip(headers, padded, strict=True)
            ]
        lines.append("   ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    sys.stdout.write(render_table(headers, rows, color=sys.stdout.isatty()))
