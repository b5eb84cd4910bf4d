"""Daemons a benchmark starts from another checkout (its `--baseline`): they must run
that checkout's code. PYTHONPATH alone does not do it: `python -m` puts the working
directory first on sys.path, and the benchmark runs in this checkout, so both sides
would run this checkout's code. PYTHONSAFEPATH (Python 3.11) leaves it out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_VARS = ("PYTHONPATH", "PYTHONSAFEPATH")


@contextlib.contextmanager
def daemons_from(tree: Path | None) -> Iterator[None]:
    """Processes started inside import shoal from `tree` (None: from this checkout)."""
    saved = {k: os.environ.get(k) for k in _VARS}
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
        os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
