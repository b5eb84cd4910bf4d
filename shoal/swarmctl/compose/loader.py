"""Reading compose files: YAML with line numbers, `${VAR}` interpolation, merging.

YAML 1.1 is used, as `docker stack deploy` does (go-yaml v2): `mode: 0440`
is octal. Variables come from the environment, then from `.env` in the
compose file's own directory (which `docker stack deploy` ignores, moby
#29133); the environment wins, as in compose.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?$", re.S)
_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?$")


class ComposeError(Exception):
    """A compose file is invalid: names the file, the key path and the line."""

    def __init__(self, file: Path | str, path: Iterable[Any], line: int | None, message: str):
        self.file = str(file)
        self.path = ".".join(str(p) for p in path) or "(top level)"
        self.line = line
        where = f"{self.file}:{line}" if line else self.file
        super().__init__(f"{where}: {self.path}: {message}")


def line_of(root: Any, path: Iterable[Any]) -> int | None:
    """The 1-based line of the deepest node on path that the YAML still knows."""
    line: int | None = None
    node = root
    for key in path:
        try:
            if isinstance(node, CommentedMap) and key in node:
                node, line = node[key], node.lc.key(key)[0] + 1
            elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
                node, line = node[key], node.lc.item(key)[0] + 1
            else:
                break
        except (KeyError, IndexError, TypeError):
            break  # a key merged in from an anchor (<<:) has no position of its own
    return line


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; # comments; optional quotes; no interpolation inside."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ComposeError(path, [], n, f"expected KEY=VALUE, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


@dataclass
class Interpolator:
    env: Mapping[str, str]
    file: Path
    root: Any = None

    def substitute(self, text: str, path: list[Any]) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group("escaped"):
                return "$"
            if m.group("named"):
                return self.env.get(m.group("named"), "")
            return self._braced(m.group("braced"), path)

        return _VAR.sub(one, text)

    def _braced(self, expr: str, path: list[Any]) -> str:
        m = _BRACED.match(expr)
        if not m:
            raise ComposeError(
                self.file, path, line_of(self.root, path), f"bad variable ${{{expr}}}"
            )
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        value = self.env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op is None:
            return value or ""
        if op.endswith("-"):
            return self.substitute(arg, path) if unset else str(value)
        if unset:  # ?, :?
            why = arg or "is required"
            raise ComposeError(
                self.file, path, line_of(self.root, path), f"variable {name} is not set: {why}"
            )
        return str(value)

    def walk(self, node: Any, path: list[Any]) -> Any:
        """Interpolates every string value (not keys) in place."""
        if isinstance(node, dict):
            for key in list(node):
                node[key] = self.walk(node[key], [*path, key])
        elif isinstance(node, list):
            for i, item in enumerate(node):
                node[i] = self.walk(item, [*path, i])
        elif isinstance(node, str) and "$" in node:
            return _typed(self.substitute(node, path))
        return node


def _typed(text: str) -> Any:
    """A value that came out of interpolation is typed like a YAML scalar would be."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text in ("true", "True", "false", "False"):
        return text.lower() == "true"
    return text


@dataclass
class ComposeFile:
    path: Path
    data: CommentedMap
    warnings: list[str] = field(default_factory=list)


def load(path: Path, environ: Mapping[str, str] | None = None) -> ComposeFile:
    """One compose file, parsed and interpolated (not yet validated)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ComposeError(path, [], None, f"cannot read: {err.strerror}") from None
    yaml = YAML(typ="rt")
    yaml.version = (1, 1)
    try:
        data = yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark
        raise ComposeError(
            path, [], mark.line + 1 if mark else None, f"invalid YAML: {err.problem}"
        ) from None
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise ComposeError(path, [], 1, "a compose file is a mapping (services:, networks:, ...)")
    env = {**read_dotenv(path.parent / ".env"), **(os.environ if environ is None else environ)}
    Interpolator(env, path, data).walk(data, [])
    return ComposeFile(path, data)


# ---------------------------------------------------------------- merging


def _as_mapping(value: Any) -> dict[str, Any]:
    """environment/labels in list form (K=V) as a mapping, so files can merge them."""
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            key, eq, val = str(item).partition("=")
            out[key] = val if eq else None
        return out
    return dict(value) if isinstance(value, dict) else {}


_MAPPING_KEYS = ("environment", "labels")


def merge(base: dict[str, Any], over: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Later files win; mappings merge key by key; lists and scalars are replaced.

    environment and labels merge by key whether written as lists or mappings.
    """
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if key in _MAPPING_KEYS and depth >= 2 and (old is not None or isinstance(value, list)):
            out[key] = {**_as_mapping(old), **_as_mapping(value)}
        elif isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge(old, value, depth + 1)
        else:
            out[key] = value
    return out
