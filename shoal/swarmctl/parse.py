"""Flag values to API fields. Each parser raises ValueError with a sentence a user can act on."""

from __future__ import annotations

import re

from shoal.proto import objects_pb2 as pb

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def duration_ms(value: str) -> int:
    """`5s`, `1m30s`, `500ms`, `2h`, or a bare number of seconds."""
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return int(float(text) * 1000)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS_MS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 500ms, 5s, 1m30s, 2h")
    return int(total)


def memory_bytes(value: str) -> int:
    """`512M`, `1G`, `64k`, `1024` (binary units)."""
    m = _MEMORY.match(value.strip())
    if not m:
        raise ValueError(f"invalid memory size {value!r}: use e.g. 512M, 1G, 65536")
    return int(float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()])


def nano_cpus(value: str) -> int:
    try:
        cpus = float(value)
    except ValueError:
        raise ValueError(f"invalid CPU count {value!r}: use e.g. 0.5 or 2") from None
    if cpus <= 0:
        raise ValueError(f"invalid CPU count {value!r}: must be more than 0")
    return int(cpus * 1_000_000_000)


def key_value(value: str, what: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ValueError(f"invalid {what} {value!r}: expected KEY=VALUE")
    return key, val


def port(value: str) -> pb.PortConfig:
    """`PUBLISHED:TARGET[/tcp|udp]` or `TARGET[/tcp|udp]`."""
    spec, _, proto = value.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"invalid port {value!r}: protocol must be tcp or udp")
    published, sep, target = spec.partition(":")
    if not sep:
        published, target = "0", published
    try:
        pub, tgt = int(published), int(target)
    except ValueError:
        raise ValueError(f"invalid port {value!r}: expected PUBLISHED:TARGET[/tcp|udp]") from None
    if not 1 <= tgt <= 65535 or not 0 <= pub <= 65535:
        raise ValueError(f"invalid port {value!r}: ports are 1-65535")
    return pb.PortConfig(
        protocol=pb.PortConfig.UDP if proto == "udp" else pb.PortConfig.TCP,
        published_port=pub,
        target_port=tgt,
    )


def mount(value: str) -> pb.Mount:
    """`type=bind|volume,source=S,target=T[,readonly]`."""
    fields: dict[str, str] = {}
    readonly = False
    for part in value.split(","):
        key, sep, val = part.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro") and (not sep or val.lower() in ("1", "true", "yes")):
            readonly = True
        elif sep and key in ("type", "source", "src", "target", "destination", "dst"):
            fields[{"src": "source", "destination": "target", "dst": "target"}.get(key, key)] = val
        else:
            raise ValueError(f"invalid mount {value!r}: unknown field {part!r}")
    kind = fields.get("type", "volume")
    if kind not in ("bind", "volume"):
        raise ValueError(f"invalid mount {value!r}: type must be bind or volume")
    if "target" not in fields or "source" not in fields:
        raise ValueError(f"invalid mount {value!r}: source and target are required")
    return pb.Mount(
        type=pb.Mount.BIND if kind == "bind" else pb.Mount.VOLUME,
        source=fields["source"],
        target=fields["target"],
        readonly=readonly,
    )


def user(value: str) -> str:
    if not _USER.match(value):
        raise ValueError(f"invalid user {value!r}: expected UID[:GID] or NAME[:GROUP]")
    return value


AVAILABILITY = {
    "active": pb.AVAILABILITY_ACTIVE,
    "pause": pb.AVAILABILITY_PAUSE,
    "drain": pb.AVAILABILITY_DRAIN,
}
RESTART_CONDITION = {
    "any": pb.RestartPolicy.ANY,
    "on-failure": pb.RestartPolicy.ON_FAILURE,
    "none": pb.RestartPolicy.NONE,
}
FAILURE_ACTION = {
    "pause": pb.UpdateConfig.PAUSE,
    "continue": pb.UpdateConfig.CONTINUE,
    "rollback": pb.UpdateConfig.ROLLBACK,
}
UPDATE_ORDER = {
    "stop-first": pb.UpdateConfig.STOP_FIRST,
    "start-first": pb.UpdateConfig.START_FIRST,
}
