"""`--secret NAME[@N][,target=PATH][,uid=U,gid=G,mode=0400]` and `--config NAME,target=PATH`."""

from __future__ import annotations

from typing import Any

_KEYS = ("source", "target", "uid", "gid", "mode")
_MAX_ID = 2**32 - 1


def _number(text: str, what: str, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {text!r}") from None
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{what} {text!r} is out of range")
    return value


def file_ref(value: str, what: str = "secret") -> dict[str, Any]:
    """A reference by name (the manager resolves it); NAME@N pins version N. In the
    specs' JSON form (FileReference's fields, see spec.py)."""
    parts = [p.strip() for p in value.split(",")]
    ref: dict[str, Any] = {}
    name = ""
    for i, part in enumerate(parts):
        key, eq, val = part.partition("=")
        if not eq:
            if i != 0:
                raise ValueError(f"--{what} {value!r}: expected KEY=VALUE, got {part!r}")
            name = part
            continue
        if key not in _KEYS:
            raise ValueError(f"--{what}: unknown key {key!r} (allowed: {', '.join(_KEYS)})")
        if key == "source":
            name = val
        elif key == "target":
            ref["target"] = val
        elif key == "mode":
            ref["mode"] = _number(val, "mode", 8)
            if ref["mode"] > 0o777:
                raise ValueError(f"--{what}: mode {val} is not a file mode (0 to 0777)")
        else:
            ref[key] = _number(val, key)
    name, at, version = name.partition("@")
    if not name:
        raise ValueError(f"--{what} {value!r}: a name is required")
    ref["name"] = name
    if at:
        ref["version"] = _number(version, f"--{what} version")
        if ref["version"] < 1:
            raise ValueError(f"--{what} {value!r}: versions count from 1")
        ref["pinned"] = True
    return ref
