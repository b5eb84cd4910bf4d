"""Which OCI runtime binary containerd's runc v2 shim runs for this node's containers.

Every container costs a `create` (with its `init` re-exec) and a `start` of the OCI
runtime; runc is a Go binary, crun a small C one that does the same from the same
spec for less CPU (bench/README.md, item 2). runc is the default: the test suite
runs every container under it on this project's hosts, while crun was tested on
cgroup v1 only and showed no latency gain. `auto` takes crun when it is installed
and can run containers here, else runc; an explicit choice that cannot is refused
up front.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHOICES = ("auto", "crun", "runc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class OciRuntimeMissing(ValueError):
    pass


def _fstypes(mountinfo: str) -> dict[str, str]:
    """Mount point -> file system type, the last mount on each point winning."""
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " in line and len(fields) > 4:
            out[fields[4]] = line.split(" - ", 1)[1].split()[0]
    return out


def crun_refuses(root: Path = CGROUP_ROOT, mountinfo: str | None = None) -> str:
    """Why crun cannot run containers on this host's cgroup layout ("" if it can).

    crun supports cgroup v2 and v1, but not the hybrid layout (v1 controllers plus a
    cgroup2 mount at <root>/unified) once the v2 side holds any controller: every
    container create then fails with "cgroups in hybrid mode not supported"."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    types = _fstypes(mountinfo)
    if types.get(str(root)) == "cgroup2" or types.get(str(root / "unified")) != "cgroup2":
        return ""
    try:
        controllers = (root / "unified" / "cgroup.controllers").read_text().split()
    except OSError:
        return ""
    if not controllers:
        return ""
    return (
        f"hybrid cgroups with controllers ({' '.join(controllers)}) on the cgroup v2 side "
        f"({root}/unified), which crun does not support"
    )


def resolve(choice: str) -> tuple[str, str, str]:
    """(name, absolute path, why crun was passed over or "") of what `choice` means here."""
    if choice not in CHOICES:
        raise OciRuntimeMissing(f"unknown OCI runtime {choice!r} (one of {', '.join(CHOICES)})")
    crun = shutil.which("crun") if choice != "runc" else None
    why = crun_refuses() if crun else ""
    if crun and not why:
        return "crun", crun, ""
    if choice == "crun":
        raise OciRuntimeMissing(
            f"OCI runtime crun cannot run containers on this host: {why}"
            if crun
            else "OCI runtime crun not found on PATH"
        )
    runc = shutil.which("runc")
    if runc is None:
        raise OciRuntimeMissing("OCI runtime runc not found on PATH")
    return "runc", runc, f"crun {why}" if why else ""
