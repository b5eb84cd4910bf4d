"""What the compose converters share: the stack being built and its names."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from shoal.swarmctl import parse
from shoal.swarmctl.compose.loader import ComposeError, read_dotenv

STACK_LABEL = "com.docker.stack.namespace"
MAX_FILE_BYTES = 500 * 1024

Locate = Callable[[list[Any]], tuple[str, int | None]]


@dataclass
class Context:
    stack: str
    data: dict[str, Any]
    base_dir: Path
    locate: Locate
    warnings: list[str] = field(default_factory=list)
    networks: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)
    default_network_used: bool = False

    def fail(self, path: list[Any], message: str) -> NoReturn:
        file, line = self.locate(path)
        raise ComposeError(file, path, line, message)

    def full(self, short: str, spec: Any) -> str:
        if isinstance(spec, dict) and spec.get("name"):
            return str(spec["name"])
        return f"{self.stack}_{short}"

    def path(self, text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def read_env_file(self, where: list[Any], text: str) -> dict[str, str]:
        path = self.path(text)
        if not path.is_file():
            self.fail(where, f"env file {path} does not exist")
        try:
            return read_dotenv(path)
        except ComposeError as err:
            self.fail(where, str(err))


def duration(ctx: Context, where: list[Any], value: Any) -> int:
    try:
        return parse.duration_ms(str(value))
    except ValueError as err:
        ctx.fail(where, str(err))


def command(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def mapping(value: Any) -> dict[str, Any]:
    """environment/labels as a mapping, from either compose form (list of K=V, or mapping)."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        key, eq, val = str(item).partition("=")
        out[key] = val if eq else None
    return out


def scalar(value: Any) -> str:
    """A YAML scalar as compose writes it into a string (booleans lower-case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def strings(value: Any) -> dict[str, str]:
    return {str(k): scalar(v) for k, v in mapping(value).items()}
