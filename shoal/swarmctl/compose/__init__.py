"""Compose files -> one stack deploy request, entirely on the client.

load (YAML, interpolation, .env) -> validate each file (schema of our own,
errors with file, key path, line) -> merge in order -> convert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shoal.proto import control_pb2 as api
from shoal.swarmctl.compose.context import STACK_LABEL
from shoal.swarmctl.compose.convert import convert, read_file_objects, request
from shoal.swarmctl.compose.loader import ComposeError, ComposeFile, line_of, load, merge
from shoal.swarmctl.compose.validate import validate

__all__ = ["STACK_LABEL", "ComposeError", "Stack", "build"]


class Stack:
    """The converted stack: the request, the warnings, and the files it came from."""

    def __init__(self, req: api.DeployStackRequest, warnings: list[str]) -> None:
        self.request = req
        self.warnings = warnings


def build(paths: Sequence[Path], stack: str, environ: Mapping[str, str] | None = None) -> Stack:
    """Raises ComposeError (file, key path, line) for anything wrong; writes nothing."""
    files: list[ComposeFile] = []
    for path in paths:
        f = load(path, environ)
        validate(f)
        files.append(f)
    merged: dict[str, Any] = {}
    for f in files:
        merged = merge(merged, dict(f.data))

    def locate(key_path: list[Any]) -> tuple[str, int | None]:
        # The last file that has (the deepest part of) the key defined it.
        best: tuple[str, int | None] = (str(files[-1].path), None)
        depth = -1
        for f in files:
            for n in range(len(key_path), 0, -1):
                line = line_of_exact(f.data, key_path[:n])
                if line is not None and n >= depth:
                    best, depth = (str(f.path), line), n
                    break
        return best

    ctx = convert(stack, merged, files[0].path.parent, locate)
    objects = read_file_objects(ctx)
    req = request(ctx, objects)
    return Stack(req, [w for f in files for w in f.warnings] + ctx.warnings)


def line_of_exact(root: Any, key_path: list[Any]) -> int | None:
    """The line of key_path only if the whole path exists in this file."""
    node = root
    for key in key_path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return line_of(root, key_path)
