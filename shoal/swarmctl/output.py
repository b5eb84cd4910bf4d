"""What swarmctl prints: JSON views as they are (the stable contract) and human tables.

The views themselves (plain dicts with the keys of CONTRACT.md) are made in
shoal/views.py; everything here works from views alone, so the read commands,
which get their views as JSON from the manager, load no protobuf. Tables and
times are for people and may change.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import click

# ---------------------------------------------------------------- times


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


def stamp_ms(stamp: str | None) -> int:
    """A view's ISO 8601 time as milliseconds since the epoch; 0 when unset."""
    if not stamp:
        return 0
    return int(datetime.datetime.fromisoformat(stamp).timestamp() * 1000)


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


def task_rows(views: Sequence[Mapping[str, Any]], now_ms: int | None = None) -> list[list[str]]:
    """One group per slot (per node for global services), newest first, older ones `\\_`."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    hostnames: dict[str, str] = {}
    for v in views:
        node = v["node"] or ""
        hostnames[node] = v["node_hostname"] or node[:SHORT_ID]
        groups.setdefault((v["service_name"], v["slot"], "" if v["slot"] else node), []).append(v)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], hostnames.get(k[2], k[2]))):
        # Stable: tasks of one second keep the manager's order, which is newest first.
        group = sorted(
            groups[key], key=lambda v: (v["created_at"] or "", v["updated_at"] or ""), reverse=True
        )
        for i, v in enumerate(group):
            name = f"{v['service_name']}.{v['slot'] if v['slot'] else v['node']}"
            when = ago(stamp_ms(v["updated_at"]), now_ms)
            rows.append(
                [
                    v["id"][:SHORT_ID],
                    name if i == 0 else f" \\_ {name}",
                    v["image"],
                    hostnames[v["node"] or ""],
                    v["desired_state"],
                    f"{v['state']} {when}".rstrip(),
                    v["error"],
                ]
            )
    return rows


def ports_text(ports: Sequence[Mapping[str, Any]]) -> str:
    return ",".join(
        f"*:{p['published']}->{p['target']}/{p['protocol']}"
        + (" (host)" if p.get("mode") == "host" else "")
        for p in ports
    )


def task_rows_with_ports(views: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """task_rows plus a PORTS column (matched back to the views by short id)."""
    ports = {v["id"][:SHORT_ID]: ports_text(v.get("ports") or []) for v in views}
    return [[*row, ports.get(row[0], "")] for row in task_rows(views)]


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
