"""The parallel unpack (shoal/worker/runtime/unpack.py) against a real containerd: an
image with whiteouts, an opaque directory, hardlinks, a setuid file, owners and xattrs
unpacks to the same tree as `ctr image pull` gives; a layer whose unpacked digest is
not its diff_id fails the pull and leaves nothing; committed snapshots are reused."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab.containerd import Containerd
from shoal.lab.images import build_layer, build_layered_image, push_image
from shoal.lab.registry import Registry
from shoal.proto.containerd import content_pb2 as content
from shoal.proto.containerd import snapshots_pb2 as snapshots
from shoal.worker.runtime import unpack
from shoal.worker.runtime.base import ContainerConfig, ImagePullError
from shoal.worker.runtime.containerd import ContainerdRuntime
from shoal.worker.runtime.unpack import chain_ids

pytestmark = pytest.mark.integration

Entry = tuple[str, bytes, int, int, int, bytes | str, dict[str, str]]


def _tar(entries: list[Entry]) -> bytes:
    """(name, type, mode, uid, gid, data or link target, pax records) as a layer tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, mode, uid, gid, body, pax in entries:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 1000
            info.pax_headers = pax
            if isinstance(body, str):
                info.linkname = body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


D, F, H, S = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE


def tricky_layers() -> list[bytes]:
    """busybox; a layer of files; one deleting, making opaque and replacing; one more
    on top (every parent directory written, as image builders do)."""
    return [
        build_layer(),
        _tar(
            [
                ("data", D, 0o755, 0, 0, b"", {}),
                ("data/opq", D, 0o750, 1000, 1000, b"", {}),
                ("data/opq/old1", F, 0o644, 0, 0, b"old 1\n", {}),
                ("data/opq/sub", D, 0o755, 0, 0, b"", {}),
                ("data/opq/sub/old2", F, 0o644, 0, 0, b"old 2\n", {}),
                ("data/gone", F, 0o644, 0, 0, b"to be deleted\n", {}),
                ("data/gonedir", D, 0o755, 0, 0, b"", {}),
                ("data/gonedir/x", F, 0o644, 0, 0, b"x\n", {}),
                ("data/keep", F, 0o600, 1000, 1000, b"kept\n", {}),
                ("data/hl1", F, 0o644, 0, 0, b"linked\n", {}),
                ("data/hl2", H, 0o644, 0, 0, "data/hl1", {}),
                ("data/suid", F, 0o4755, 0, 0, b"#!/bin/sh\n", {}),
                ("data/noted", F, 0o644, 0, 0, b"n\n", {"SCHILY.xattr.user.note": "hello"}),
                ("data/link", S, 0o777, 0, 0, "keep", {}),
            ]
        ),
        _tar(
            [
                ("data", D, 0o755, 0, 0, b"", {}),
                ("data/.wh.gone", F, 0o644, 0, 0, b"", {}),
                ("data/.wh.gonedir", F, 0o644, 0, 0, b"", {}),
                ("data/opq", D, 0o770, 1000, 1000, b"", {}),
                ("data/opq/.wh..wh..opq", F, 0o644, 0, 0, b"", {}),
                ("data/opq/new", F, 0o644, 0, 0, b"new\n", {}),
                ("data/hl3", F, 0o2755, 0, 1000, b"setgid, linked twice\n", {}),
                ("data/hl4", H, 0o2755, 0, 1000, "data/hl3", {}),
                ("data/sticky", D, 0o1777, 0, 0, b"", {}),
            ]
        ),
        _tar(
            [
                ("data", D, 0o755, 0, 0, b"", {}),
                ("data/opq", D, 0o770, 1000, 1000, b"", {}),
                ("data/opq/.wh.new", F, 0o644, 0, 0, b"", {}),
                ("data/opq/newer", F, 0o644, 0, 0, b"newer\n", {}),
                ("data/gone", D, 0o700, 0, 0, b"", {}),
                ("data/.wh.hl1", F, 0o644, 0, 0, b"", {}),
                ("data/late", F, 0o644, 0, 0, b"late\n", {}),
            ]
        ),
    ]


def tree(root: Path) -> dict[str, Any]:
    """Everything a container sees of a root: type, mode, owner, link count, contents,
    link targets, xattrs, mtime, and which paths share an inode (hardlinks)."""
    out: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    for base, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(base, name)
            rel = str(path.relative_to(root))
            st = path.lstat()
            names = os.listxattr(path, follow_symlinks=False)
            attrs = {a: os.getxattr(path, a, follow_symlinks=False) for a in names}
            body: str | None = None
            if path.is_symlink():
                body = os.readlink(path)
            elif path.is_file():
                body = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, body, attrs, st.st_mtime)
            if not path.is_dir():
                inodes.setdefault(st.st_ino, []).append(rel)
    out["hardlinks"] = sorted(sorted(v) for v in inodes.values() if len(v) > 1)
    return out


@contextlib.contextmanager
def mounted(mounts: list[Any]) -> Iterator[Path]:
    """A snapshot view's mounts on a temp directory of the host (read-only)."""
    (m,) = mounts
    target = Path(tempfile.mkdtemp(prefix="shoal-test-view-"))
    options = ",".join([*m.options, "ro"]) if m.type == "overlay" else "ro,bind"
    source = m.source
    subprocess.run(["mount", "-t", m.type, "-o", options, source, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
        target.rmdir()


@contextlib.asynccontextmanager
async def view(rt: ContainerdRuntime, namespace: str, chain: str) -> AsyncIterator[list[Any]]:
    ctrd = rt.ctrd
    key = f"view-{uuid.uuid4().hex[:8]}"
    md = [("containerd-namespace", namespace)]
    got = await ctrd.snapshots.View(
        # A GC root: the collection a pull's end sets off must not take it.
        snapshots.ViewSnapshotRequest(
            snapshotter="overlayfs", key=key, parent=chain, labels={"containerd.io/gc.root": "1"}
        ),
        metadata=md,
    )
    try:
        yield list(got.mounts)
    finally:
        await ctrd.snapshots.Remove(
            snapshots.RemoveSnapshotRequest(snapshotter="overlayfs", key=key), metadata=md
        )


async def snapshot_names(rt: ContainerdRuntime) -> dict[str, int]:
    """The namespace's snapshots: name -> creation time (ns)."""
    listed = rt.ctrd.snapshots.List(
        snapshots.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=rt.ctrd.md()
    )
    return {i.name: i.created_at.ToNanoseconds() async for resp in listed for i in resp.info}


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The layers that went through the parallel path (a spy: it calls through)."""
    seen: list[str] = []
    real = unpack.Unpacker._stage

    async def spy(self: unpack.Unpacker, order: int, layer: Any, diff_id: str, fetched: Any) -> Any:
        got = await real(self, order, layer, diff_id, fetched)
        if got is not None:
            seen.append(diff_id)
        return got

    monkeypatch.setattr(unpack.Unpacker, "_stage", spy)
    return seen


async def test_the_parallel_unpack_gives_the_tree_ctr_gives(
    containerd: Containerd, registry: Registry, tmp_path: Path, staged: list[str]
) -> None:
    layers = tricky_layers()
    blobs = build_layered_image(layers, ["cat", "/data/late", "/data/opq/newer"])
    image = push_image(registry.addr, "tricky", "v1", blobs)
    diff_ids = json.loads(blobs[json.loads(blobs["manifest"])["config"]["digest"]])["rootfs"]
    top = chain_ids(diff_ids["diff_ids"])[-1]
    ns_ctr = f"test-ctr-{uuid.uuid4().hex[:8]}"
    ctr = ["ctr", "-a", str(containerd.socket), "-n", ns_ctr, "images"]
    pulled = await asyncio.to_thread(
        subprocess.run, [*ctr, "pull", "--plain-http", image], capture_output=True, text=True
    )
    assert pulled.returncode == 0, pulled.stderr
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    try:
        await rt.pull(image)
        assert len(staged) == 3  # every layer above the first went the parallel way
        assert set(await snapshot_names(rt)) == set(chain_ids(diff_ids["diff_ids"]))
        async with view(rt, rt.ctrd.namespace, top) as ours, view(rt, ns_ctr, top) as theirs:
            # Two unpackings of their own, not one shared.
            lower = [{o for o in m[0].options if o.startswith("lowerdir=")} for m in (ours, theirs)]
            assert len(lower[0]) == 1 and not lower[0] & lower[1]
            with mounted(ours) as a, mounted(theirs) as b:
                got, want = tree(a), tree(b)
        assert got == want
        # What the test image is there to exercise, seen through the overlay.
        data = {k: v for k, v in got.items() if k.startswith("data")}
        assert "data/gonedir" not in data and "data/hl1" not in data
        assert data["data/gone"][0] == 0o40700
        assert sorted(k for k in data if k.startswith("data/opq/")) == ["data/opq/newer"]
        assert data["data/suid"][0] == 0o104755 and data["data/hl3"][0] == 0o102755
        assert got["hardlinks"] == [["data/hl3", "data/hl4"]]
        assert data["data/noted"][5] == {"user.note": b"hello"}
        assert data["data/keep"][1:3] == (1000, 1000) and data["data/opq"][0] == 0o40770
        # And a container runs from it.
        log = tmp_path / "c.log"
        await rt.create(ContainerConfig(container_id="c", image=image, log_path=log))
        await rt.start("c")
        assert await rt.wait("c") == 0
        assert log.read_text().split() == ["late", "newer"]
        await rt.remove("c")
    finally:
        await rt.close()
        await asyncio.to_thread(subprocess.run, [*ctr, "rm", image], capture_output=True)


@pytest.mark.parametrize("bad", [0, 2], ids=["lowest-layer", "a-staged-layer"])
async def test_a_layer_not_matching_its_diff_id_fails_the_pull_and_leaves_nothing(
    containerd: Containerd, registry: Registry, tmp_path: Path, bad: int
) -> None:
    layers = tricky_layers()
    blobs = build_layered_image(layers)
    config_digest = json.loads(blobs["manifest"])["config"]["digest"]
    config = json.loads(blobs.pop(config_digest))
    config["rootfs"]["diff_ids"][bad] = "sha256:" + "0" * 64
    # The manifest names the changed config: every blob's own digest is right.
    body = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    mf = json.loads(blobs["manifest"])
    mf["config"].update(digest=digest, size=len(body))
    manifest = json.dumps(mf).encode()
    blobs.update({digest: body, "manifest": manifest})
    blobs["manifest_digest"] = ("sha256:" + hashlib.sha256(manifest).hexdigest()).encode()
    image = push_image(registry.addr, "baddiff", f"v{bad}", blobs)
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    dirs = containerd.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    before = set(os.listdir(dirs)) if dirs.exists() else set()
    try:
        with pytest.raises(ImagePullError, match="unpacks to sha256:"):
            await rt.pull(image)
        assert await snapshot_names(rt) == {}
        listed = rt.ctrd.content.List(content.ListContentRequest(), metadata=rt.ctrd.md())
        assert [i.digest async for resp in listed for i in resp.info] == []
        assert set(os.listdir(dirs)) - before == set()  # nor their directories
    finally:
        await rt.close()


async def test_committed_snapshots_are_reused(
    containerd: Containerd, registry: Registry, tmp_path: Path, staged: list[str]
) -> None:
    layers = tricky_layers()
    low = push_image(registry.addr, "reuse", "low", build_layered_image(layers[:3]))
    high = push_image(registry.addr, "reuse", "high", build_layered_image(layers))
    ns = f"test-{uuid.uuid4().hex[:8]}"
    rt = ContainerdRuntime(str(containerd.socket), ns, tmp_path)
    try:
        await rt.pull(low)
        first = await snapshot_names(rt)
        assert len(first) == 3 and len(staged) == 2
        # An image on the same layers and one more: only that one is unpacked.
        await rt.pull(high)
        second = await snapshot_names(rt)
        assert {k: second[k] for k in first} == first and len(second) == 4
        assert len(staged) == 2  # the one new layer went straight onto its parent
    finally:
        await rt.close()
    # The same image again, from a new agent's image store: nothing unpacked again.
    again = ContainerdRuntime(str(containerd.socket), ns, tmp_path)
    try:
        await again.pull(high)
        assert await snapshot_names(again) == second
    finally:
        await again.close()


async def test_another_snapshotter_takes_the_serial_path(
    containerd: Containerd, registry: Registry, tmp_path: Path, staged: list[str]
) -> None:
    blobs = build_layered_image(tricky_layers(), ["ls", "-A", "/data", "/data/opq"])
    image = push_image(registry.addr, "tricky", "native", blobs)
    ns = f"test-{uuid.uuid4().hex[:8]}"
    rt = ContainerdRuntime(str(containerd.socket), ns, tmp_path, snapshotter="native")
    try:
        await rt.pull(image)
        assert staged == []
        log = tmp_path / "c.log"
        await rt.create(ContainerConfig(container_id="c", image=image, log_path=log))
        await rt.start("c")
        assert await rt.wait("c") == 0
        listed = log.read_text().split()
        want = "/data: gone hl2 hl3 hl4 keep late link noted opq sticky suid /data/opq: newer"
        assert listed == want.split()
        await rt.remove("c")
    finally:
        await rt.close()
