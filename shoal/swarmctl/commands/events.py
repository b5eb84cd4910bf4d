"""`swarmctl events`: the cluster's changes as they happen (like `docker events`)."""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import click

from shoal.proto import control_pb2 as api
from shoal.swarmctl import listing, parse
from shoal.swarmctl.session import client

TYPES = ("service", "task", "node")
_REVISION = re.compile(r"\d+")


def since_request(since: str) -> tuple[int, int]:
    """`--since`: a whole number is an etcd revision, a duration (5m, 1h30m) a time ago.
    Returns (since_revision, since_ms)."""
    text = since.strip()
    if not text:
        return 0, 0
    if _REVISION.fullmatch(text):
        revision = int(text)
        if revision < 1:
            raise ValueError("--since: revisions start at 1")
        return revision, 0
    try:
        ago_ms = parse.duration_ms(text)
    except ValueError:
        raise ValueError(
            f"invalid --since {since!r}: use a duration (e.g. 10m, 1h) or a revision number"
        ) from None
    return 0, max(1, int(time.time() * 1000) - ago_ms)


def filter_types(filters: Iterable[str]) -> list[str]:
    """`--filter type=service` (repeatable; several types widen the stream)."""
    types: list[str] = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key.strip() != "type":
            raise ValueError(f"invalid --filter {f!r}: the only filter is type=service|task|node")
        value = value.strip()
        if value not in TYPES:
            raise ValueError(f"invalid --filter {f!r}: type is one of service, task, node")
        types.append(value)
    return sorted(set(types))


def event_view(ev: api.Event) -> dict[str, Any]:
    stamp = datetime.datetime.fromtimestamp(ev.time_ms / 1000, datetime.UTC)
    return {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "revision": int(ev.revision),
        "type": ev.type,
        "action": ev.action,
        "id": ev.id,
        "name": ev.name,
    }


def print_events(events: Iterable[api.Event], fmt: str) -> None:
    out = sys.stdout
    for ev in events:
        view = event_view(ev)
        if fmt == "json":
            out.write(json.dumps(view) + "\n")
        else:
            out.write(
                f"{view['time']} {view['type']} {view['action']} {view['id']} "
                f"(name={view['name']}, revision={view['revision']})\n"
            )
        out.flush()


@click.command("events")
@click.option("--since", default="", metavar="DURATION|REVISION", help="Replay from then first.")
@click.option("--filter", "filters", multiple=True, metavar="type=service|task|node")
@listing.format_option
def group(since: str, filters: tuple[str, ...], fmt: str) -> None:
    """Print the cluster's changes as they happen (Ctrl-C stops)."""
    since_revision, since_ms = since_request(since)
    request = api.EventsRequest(
        since_revision=since_revision, since_ms=since_ms, types=filter_types(filters)
    )
    try:
        print_events(client().events(request), fmt)
    except KeyboardInterrupt:
        pass
