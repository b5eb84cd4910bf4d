"""Which OCI runtime binary containerd's runc v2 shim runs for this node's containers.

Every container costs a `create` (with its `init` re-exec) and a `start` of the OCI
runtime; runc is a Go binary, crun a small C one that does the same from the same
spec in a fraction of the CPU (bench/README.md, item 2). `auto` takes crun when it is
installed, else runc; an explicit choice that is not installed is refused up front.
"""

from __future__ import annotations

import shutil

CHOICES = ("auto", "crun", "runc")


class OciRuntimeMissing(ValueError):
    pass


def resolve(choice: str) -> tuple[str, str]:
    """(name, absolute path) of the runtime `choice` means on this host."""
    if choice not in CHOICES:
        raise OciRuntimeMissing(f"unknown OCI runtime {choice!r} (one of {', '.join(CHOICES)})")
    for name in ("crun", "runc") if choice == "auto" else (choice,):
        path = shutil.which(name)
        if path is not None:
            return name, path
    wanted = "crun or runc" if choice == "auto" else choice
    raise OciRuntimeMissing(f"OCI runtime {wanted} not found on PATH")
