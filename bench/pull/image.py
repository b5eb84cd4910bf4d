"""The cold-pull benchmark's image: 7 gzip layers, ~57 MB compressed, from the host's files.

Layer 1 is the lab's busybox layer (so `sleep` runs); layers 2-7 each take the
files of one host directory in sorted order up to a byte budget, under their own
path (usr/lib/..., usr/share/...), owners root, mtimes zero: the same host gives
the same digests run after run. A directory the host lacks is skipped for the
next candidate, so any Debian-like host yields an image of about this shape.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from shoal.lab.images import build_layer, build_layered_image

# (directory, uncompressed budget in MB): shared libraries, binaries, scripts, docs,
# translations and man pages (already gzipped): a mix that compresses like a real image.
CANDIDATES = [
    ("/usr/lib/x86_64-linux-gnu", 36),
    ("/usr/lib/aarch64-linux-gnu", 36),
    ("/usr/bin", 30),
    ("/usr/lib/python3", 24),
    ("/usr/share/locale", 18),
    ("/usr/share/doc", 14),
    ("/usr/share/perl", 14),
    ("/usr/share/man", 10),
    ("/usr/share/i18n", 14),
    ("/usr/lib/gcc", 30),
]
HOST_LAYERS = 6


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def budget_layer(root: Path, budget: int) -> bytes:
    """root's files (sorted, regular files, dirs and symlinks) until `budget` bytes."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = root.parts[1:]
        for i in range(1, len(parts)):
            tar.addfile(_normalised(_dir("/".join(parts[:i]))))
        for path in [root, *sorted(root.rglob("*"))]:
            if total >= budget:
                break
            if not (path.is_symlink() or path.is_file() or path.is_dir()):
                continue
            try:
                if path.is_file() and not path.is_symlink():
                    size = path.stat().st_size
                    if total + size > budget:
                        continue
                    total += size
                tar.add(path, arcname=str(path)[1:], recursive=False, filter=_normalised)
            except OSError:
                continue
    return buf.getvalue()


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def build() -> tuple[dict[str, bytes], list[str]]:
    """The image's blobs (shoal.lab.images' shape) and the host directories used."""
    tars = [build_layer()]
    used = []
    for directory, mb in CANDIDATES:
        if len(tars) > HOST_LAYERS:
            break
        if Path(directory).is_dir():
            tars.append(budget_layer(Path(directory), mb << 20))
            used.append(directory)
    if len(tars) != HOST_LAYERS + 1:
        raise RuntimeError(f"only {len(tars) - 1} of the candidate directories exist: {used}")
    return build_layered_image(tars, ["sleep", "600"], level=6), used
