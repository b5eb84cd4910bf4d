"""OCI images without Docker: the tiny busybox image the tests use, or any directory as a
one-layer image; written as an OCI image layout or pushed to a registry over HTTP.

The busybox image is one gzip layer: /bin/busybox (Debian's busybox-static) with
symlinks for the applets the tests use, /etc/passwd and /etc/group (root, an `app`
user 1000, nobody), /tmp, and a /var/www/index.html. Layers are deterministic: the
same input gives the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
import time
import urllib.request
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = [
    "sh",
    "sleep",
    "cat",
    "echo",
    "env",
    "id",
    "ls",
    "wget",
    "httpd",
    "hostname",
    "ip",
    "nc",
    "grep",
    "cut",
    "head",
    "tail",
    "true",
    "false",
    "kill",
    "ps",
    "mkdir",
    "touch",
    "date",
    "top",
    "sed",
    "awk",
    "wc",
    "test",
    "ping",
    "printf",
    "uname",
    "nslookup",
    "seq",
    "yes",
]
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnobody:x:65534:\n"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.type, info.linkname, info.mtime = mode, kind, link, 0
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def build_layer() -> bytes:
    """The uncompressed layer tar (deterministic: same bytes every time)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in (
            "bin",
            "etc",
            "tmp",
            "root",
            "home",
            "home/app",
            "var",
            "var/www",
            "data",
            "proc",
            "sys",
            "dev",
        ):
            _add(tar, d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        _add(tar, "bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        _add(tar, "etc/passwd", PASSWD.encode())
        _add(tar, "etc/group", GROUP.encode())
        _add(tar, "var/www/index.html", b"hello from shoal\n")
    return buf.getvalue()


def dir_layer(root: Path) -> bytes:
    """A directory as an uncompressed layer tar: owned by root, mtimes zeroed, sorted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):

            def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = 0
                return info

            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=normalise)
    return buf.getvalue()


def build_image(layer_tar: bytes | None = None, cmd: list[str] | None = None) -> dict[str, bytes]:
    """Blobs by digest, plus "manifest" and "manifest_digest". Default: the busybox image."""
    return build_layered_image([build_layer() if layer_tar is None else layer_tar], cmd)


def build_layered_image(
    layer_tars: list[bytes], cmd: list[str] | None = None, level: int = 9
) -> dict[str, bytes]:
    """An image of these uncompressed layer tars, lowest first, each gzipped (`level`:
    gzip's compression level; 9 keeps the one-layer images' digests as they were)."""
    gzipped = [gzip.compress(t, compresslevel=level, mtime=0) for t in layer_tars]
    history = [{"created_by": "shoal tests/testbed/images.py"}]
    config = json.dumps(
        {
            "architecture": ARCH,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd or ["sh"],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in layer_tars]},
            # Kept as it was when this file lived in tests/testbed: the busybox image's
            # digest stays the same (benchmark results cite it).
            "history": history * len(layer_tars),
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _sha(gz),
                    "size": len(gz),
                }
                for gz in gzipped
            ],
        }
    ).encode()
    return {
        _sha(config): config,
        **{_sha(gz): gz for gz in gzipped},
        "manifest": manifest,
        "manifest_digest": _sha(manifest).encode(),
    }


def write_layout(blobs: dict[str, bytes], out: Path, ref: str = "latest") -> Path:
    """Writes the image as an OCI image layout directory (what `ctr import`, skopeo and
    other tools read); returns out."""
    (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (out / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for digest, data in blobs.items():
        if digest.startswith("sha256:"):
            (out / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    manifest = blobs["manifest"]
    (out / "blobs" / "sha256" / _sha(manifest)[7:]).write_bytes(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (out / "index.json").write_text(json.dumps(index))
    return out


def push_image(
    registry: str, repo: str, tag: str = "latest", blobs: dict[str, bytes] | None = None
) -> str:
    """Pushes the image (default: busybox) to http://registry (monolithic blob uploads);
    returns its reference."""
    blobs = blobs or build_image()
    base = f"http://{registry}/v2/{repo}"
    for digest, data in blobs.items():
        if not digest.startswith("sha256:"):
            continue
        start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=30) as resp:
            location = resp.headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry}{location}"
        sep = "&" if "?" in location else "?"
        put = urllib.request.Request(
            f"{location}{sep}digest={digest}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(put, timeout=30).close()
    put = urllib.request.Request(
        f"{base}/manifests/{tag}",
        data=blobs["manifest"],
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    urllib.request.urlopen(put, timeout=30).close()
    return f"{registry}/{repo}:{tag}"


def main(argv: list[str] | None = None) -> None:
    """`python -m shoal.lab.images REGISTRY [REPO [TAG]] [--dir DIR [--cmd ARG...]]`: the
    push half of `shoal-lab image push`, run inside the registry host's namespace."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m shoal.lab.images")
    p.add_argument("registry")
    p.add_argument("repo", nargs="?", default="busybox")
    p.add_argument("tag", nargs="?", default="latest")
    p.add_argument("--dir", type=Path, help="a directory to push as a one-layer image")
    p.add_argument("--cmd", nargs="+", help="the image's default command")
    args = p.parse_args(argv)
    started = time.monotonic()
    blobs = build_image(dir_layer(args.dir) if args.dir else None, args.cmd)
    ref = push_image(args.registry, args.repo, args.tag, blobs)
    print(ref, f"({time.monotonic() - started:.2f}s)")


if __name__ == "__main__":
    main()
