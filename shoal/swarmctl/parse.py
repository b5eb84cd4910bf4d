"""Flag values to API fields.

Pure functions: each returns the value for one flag in the specs' JSON form (the
protobuf JSON mapping with the .proto's field names and enum value names, see
spec.py) or raises ValueError with a sentence the user can act on (swarmctl
prints it and exits 1). Free of protobuf: the service commands send these as JSON.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from shoal.defaults import MAX_REPLICAS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_DURATION_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

_USER_PART = re.compile(r"\d+|[A-Za-z_][A-Za-z0-9_.-]*")
_MAX_ID = 2**32 - 1

V = TypeVar("V")


def duration_ms(value: str) -> int:
    """`500ms`, `5s`, `1m30s`, `2h`, or a bare number of seconds."""
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return round(float(text) * 1000)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 5s, 1m30s or 2h")
    return round(sum(float(n) * _DURATION_MS[unit] for n, unit in _DURATION_PART.findall(text)))


def memory_bytes(value: str) -> int:
    """`512M`, `1G`, `64k`, `1024` (bytes); units are binary (k = 1024)."""
    m = _MEMORY.fullmatch(value.strip())
    if not m:
        raise ValueError(f"invalid memory size {value!r}: use e.g. 512M, 1G or 1048576")
    return int(float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()])


def nano_cpus(value: str) -> int:
    """`1.5` CPUs as nano-CPUs; 0 means no limit."""
    try:
        cpus = float(value)
    except ValueError:
        raise ValueError(f"invalid CPU count {value!r}: use e.g. 0.5 or 2") from None
    if not math.isfinite(cpus) or cpus < 0:
        raise ValueError(f"invalid CPU count {value!r}: must be 0 or more")
    return round(cpus * 1_000_000_000)


def check_replicas(n: int) -> int:
    if n < 0:
        raise ValueError(f"replicas must be 0 or more, got {n}")
    if n > MAX_REPLICAS:
        raise ValueError(f"replicas must be between 0 and {MAX_REPLICAS}, got {n}")
    return n


def key_value(value: str, what: str) -> tuple[str, str]:
    """`KEY=VALUE` (the value may be empty or hold more `=`)."""
    key, sep, val = value.partition("=")
    if not sep or not key or key != key.strip():
        raise ValueError(f"invalid {what} {value!r}: expected KEY=VALUE")
    return key, val


def scale_pair(value: str) -> tuple[str, int]:
    """`NAME=REPLICAS` of `service scale`."""
    name, sep, count = value.partition("=")
    if not sep or not name or not count.isdigit():
        raise ValueError(f"invalid scale {value!r}: expected NAME=REPLICAS, e.g. web=3")
    return name, int(count)


def port(value: str) -> dict[str, Any]:
    """`PUBLISHED:TARGET[/tcp|udp]`, or `published=P,target=T[,protocol=P][,mode=M]`
    (without `published`, the manager picks a free port from 30000-32767)."""
    if "=" in value:
        return _port_fields(value)
    ports, _, proto = value.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"invalid port {value!r}: the protocol is tcp or udp")
    published, sep, target = ports.partition(":")
    if not (sep and published.isdigit() and target.isdigit()):
        raise ValueError(f"invalid port {value!r}: expected PUBLISHED:TARGET[/tcp|udp]")
    pub, tgt = int(published), int(target)
    if not (1 <= pub <= 65535 and 1 <= tgt <= 65535):
        raise ValueError(f"invalid port {value!r}: ports are 1-65535")
    return {"protocol": proto.upper(), "published_port": pub, "target_port": tgt, "mode": "INGRESS"}


# PortConfig.PublishMode's names by flag spelling.
PUBLISH_MODE = {"ingress": "INGRESS", "host": "HOST"}


def _port_fields(value: str) -> dict[str, Any]:
    fields: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.partition("=")
        if not sep or key not in ("published", "target", "protocol", "mode") or key in fields:
            raise ValueError(
                f"invalid port {value!r}: expected published=P,target=T"
                "[,protocol=tcp|udp][,mode=ingress|host]"
            )
        fields[key] = val.strip().lower()
    for key in ("published", "target"):
        text = fields.get(key, "0" if key == "published" else "")
        if not text.isdigit() or not (int(text) <= 65535 and (key == "published" or int(text))):
            raise ValueError(f"invalid port {value!r}: {key} must be a port 1-65535")
    proto = fields.get("protocol", "tcp")
    if proto not in ("tcp", "udp"):
        raise ValueError(f"invalid port {value!r}: the protocol is tcp or udp")
    mode = fields.get("mode", "ingress")
    if mode not in PUBLISH_MODE:
        raise ValueError(f"invalid port {value!r}: the mode is ingress or host")
    return {
        "protocol": proto.upper(),
        "published_port": int(fields.get("published", "0")),
        "target_port": int(fields["target"]),
        "mode": PUBLISH_MODE[mode],
    }


def port_key(p: dict[str, Any]) -> tuple[int, str, int]:
    """Which port a flag replaces: the same published port, or (without one) target.
    (The JSON form leaves out fields at their default: 0, TCP.)"""
    published = int(p.get("published_port", 0))
    return (published, p.get("protocol", "TCP"), 0 if published else int(p.get("target_port", 0)))


_MOUNT_KEYS = {
    "type": "type",
    "source": "source",
    "src": "source",
    "target": "target",
    "destination": "target",
    "dst": "target",
}
_TRUE = ("", "1", "true", "yes")
_FALSE = ("0", "false", "no")


def mount(value: str) -> dict[str, Any]:
    """`type=bind|volume,source=S,target=T[,readonly]` (type defaults to volume)."""
    fields: dict[str, str] = {}
    readonly = False
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if val.lower() not in (*_TRUE, *_FALSE):
                raise ValueError(f"invalid mount {value!r}: readonly is true or false")
            readonly = val.lower() in _TRUE
        elif sep and key in _MOUNT_KEYS:
            fields[_MOUNT_KEYS[key]] = val
        else:
            raise ValueError(f"invalid mount {value!r}: unknown field {part!r}")
    kind = fields.get("type", "volume").lower()
    if kind not in ("bind", "volume"):
        raise ValueError(f"invalid mount {value!r}: type is bind or volume")
    if not fields.get("source") or not fields.get("target"):
        raise ValueError(f"invalid mount {value!r}: source and target are required")
    return {
        "type": kind.upper(),
        "source": fields["source"],
        "target": fields["target"],
        "readonly": readonly,
    }


def user(value: str) -> str:
    """`UID[:GID]` (names are looked up in the image, so `USER[:GROUP]` works too)."""
    parts = value.split(":")
    if len(parts) > 2 or not all(_USER_PART.fullmatch(p) for p in parts):
        raise ValueError(f"invalid user {value!r}: expected UID[:GID], e.g. 1000:1000")
    if any(p.isdigit() and int(p) > _MAX_ID for p in parts):
        raise ValueError(f"invalid user {value!r}: IDs are 0-{_MAX_ID}")
    return value


# Flag spellings of the API's enums -> their .proto value names; the keys are also
# the click choices.
AVAILABILITY = {
    "active": "AVAILABILITY_ACTIVE",
    "pause": "AVAILABILITY_PAUSE",
    "drain": "AVAILABILITY_DRAIN",
}
RESTART_CONDITION = {"any": "ANY", "on-failure": "ON_FAILURE", "none": "NONE"}
FAILURE_ACTION = {"pause": "PAUSE", "continue": "CONTINUE", "rollback": "ROLLBACK"}
UPDATE_ORDER = {"stop-first": "STOP_FIRST", "start-first": "START_FIRST"}


def _choice(table: dict[str, V], value: str, what: str) -> V:
    try:
        return table[value.strip().lower()]
    except KeyError:
        raise ValueError(f"invalid {what} {value!r}: use {', '.join(table)}") from None


def availability(value: str) -> str:
    return _choice(AVAILABILITY, value, "availability")


def restart_condition(value: str) -> str:
    return _choice(RESTART_CONDITION, value, "restart condition")


def failure_action(value: str) -> str:
    return _choice(FAILURE_ACTION, value, "update failure action")


def update_order(value: str) -> str:
    return _choice(UPDATE_ORDER, value, "update order")


_CAPABILITY = re.compile(r"^(?:CAP_)?[A-Z_]+$")


def capability(name: str) -> str:
    """`net_admin`, `NET_ADMIN` or `CAP_NET_ADMIN` -> `CAP_NET_ADMIN` (the manager checks
    that it exists)."""
    upper = name.strip().upper()
    if not _CAPABILITY.match(upper):
        raise ValueError(f"invalid capability {name!r}: expected e.g. NET_ADMIN")
    return upper if upper.startswith("CAP_") else "CAP_" + upper


def security_opt(text: str) -> str:
    """`seccomp=unconfined|default` -> the spec's seccomp field; nothing else is supported."""
    key, sep, value = text.partition("=")
    if key != "seccomp" or not sep or value not in ("unconfined", "default"):
        raise ValueError(
            f"unsupported --security-opt {text!r}: only seccomp=unconfined or seccomp=default"
        )
    return "" if value == "default" else value
