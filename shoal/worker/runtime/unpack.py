"""An image's layers into containerd snapshots: applied in parallel, chained in order.

containerd 1.6 applies a layer on top of its parent's committed snapshot, so unpacking
a pull is serial, and it is most of a cold pull (gunzip, untar, hashing in containerd).
On the overlayfs snapshotter each layer's snapshot holds only that layer's own tree
(its upperdir), so the applying need not wait for the layers below: every layer
above the first is applied, as soon as its blob is in (UNPACKS at a time), into a
temporary snapshot with no parent. The diff service is handed that snapshot's
directory as an overlay upperdir, so it writes whiteouts the way overlayfs reads
them (0:0 character devices, opaque-directory xattrs) instead of deleting. Then, in
layer order, each layer's real snapshot is prepared on its parent, the applied tree
renamed into its upperdir (one rename(2) within the snapshotter's directory: files,
hardlinks, modes, owners and xattrs move as they are), committed under its chain ID,
and the temporary snapshot removed. containerd 2.1 does the same inside ("parallel
unpack", rebasing at commit). Every layer's digest as unpacked is checked against the
config's diff_ids. All is made under the pull's lease: a failed or interrupted pull
leaves nothing once the lease goes. Another snapshotter, or mounts of another shape,
take the serial path.

One difference from the serial path, as in containerd 2.1: a directory a layer only
implies (a file in it, no entry of its own) is created 0755 root:root, not copied from
the layers below. Image builders write every parent directory into each layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.proto.containerd import descriptor_pb2 as descriptor
from shoal.proto.containerd import diff_pb2 as diff
from shoal.proto.containerd import mount_pb2
from shoal.proto.containerd import snapshots_pb2 as snapshots
from shoal.registry import Descriptor
from shoal.worker.runtime.base import (
    ContainerNotFound,
    ImagePullError,
    RuntimeFailure,
    RuntimeUnavailable,
)
from shoal.worker.runtime.connection import Containerd

log = logging.getLogger(__name__)

# Layers applied at once: each apply is about one core in containerd (gunzip, untar).
UNPACKS = 2
# The snapshotter whose snapshots are independent upperdirs (the parallel path).
OVERLAYFS = "overlayfs"
APPLY_DEADLINE_S = 600.0


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain IDs of layers: snapshot names in containerd."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def desc_pb(d: Descriptor) -> descriptor.Descriptor:
    return descriptor.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=d.annotations
    )


def bind_source(mounts: Sequence[Any]) -> str | None:
    """The directory of a parentless overlayfs snapshot (one rw bind mount), if the
    mounts are of that shape and the directory is there as we see it."""
    if len(mounts) != 1 or mounts[0].type != "bind" or "rw" not in mounts[0].options:
        return None
    source = str(mounts[0].source)
    if not os.path.isabs(source) or not os.path.isdir(source):
        return None
    return source


def overlay_upper(mounts: Sequence[Any]) -> str | None:
    """The upperdir of an active overlayfs snapshot on a parent, if the mounts are of
    that shape (and not user-xattr overlays, whose whiteouts the applier does not write)."""
    if len(mounts) != 1 or mounts[0].type != "overlay" or "userxattr" in mounts[0].options:
        return None
    uppers = [o.removeprefix("upperdir=") for o in mounts[0].options if o.startswith("upperdir=")]
    if len(uppers) != 1 or not os.path.isabs(uppers[0]) or not os.path.isdir(uppers[0]):
        return None
    return str(uppers[0])


def move_tree(src: str, dst: str) -> None:
    """The applied tree `src` becomes the fresh, empty upperdir `dst` (same filesystem).

    containerd made `dst` owned like the parent's upperdir; the applied root is
    root-owned unless the layer said otherwise, so a non-root parent owner carries
    over to a root-owned applied root, as in the serial path."""
    made = os.lstat(dst)
    os.rmdir(dst)  # only an empty directory: a fresh snapshot's
    os.rename(src, dst)
    got = os.lstat(dst)
    if (made.st_uid, made.st_gid) != (0, 0) and (got.st_uid, got.st_gid) == (0, 0):
        os.lchown(dst, made.st_uid, made.st_gid)


class Slots:
    """At most n holders at a time; a freed slot goes to the lowest layer waiting, not
    the first to ask (the chaining waits on the lower layers; higher ones' blobs, often
    smaller, tend to come in first)."""

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiting: list[tuple[int, asyncio.Future[None]]] = []

    @contextlib.asynccontextmanager
    async def take(self, order: int) -> AsyncIterator[None]:
        if self.free > 0 and not self.waiting:
            self.free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (order, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # granted as we were cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            _, turn = heapq.heappop(self.waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


@dataclass(frozen=True)
class Staged:
    """A layer applied into a temporary snapshot of its own."""

    key: str
    tree: str


class Unpacker:
    """One pull's unpacking, under its lease."""

    def __init__(self, ctrd: Containerd, snapshotter: str, name: str, lease: str) -> None:
        self.ctrd = ctrd
        self.snapshotter = snapshotter
        self.name = name
        self.lease = lease
        self.slots = Slots(UNPACKS)
        # Temporary snapshots being removed: off the chaining's path, awaited at the end.
        self.removals: list[asyncio.Future[None]] = []

    async def unpack(
        self,
        layers: Sequence[Descriptor],
        diff_ids: list[str],
        fetches: Sequence[asyncio.Future[None]],
    ) -> None:
        """Every layer into its chain's snapshot; those already committed are reused."""
        chains = chain_ids(diff_ids)
        present = await asyncio.gather(*(self._exists(c) for c in chains))
        # A committed snapshot's parents are committed too: start above the highest.
        start = max((i + 1 for i, p in enumerate(present) if p), default=0)
        if start == len(chains):
            return
        todo = range(start, len(chains))
        parallel = self.snapshotter == OVERLAYFS
        if not parallel:
            log.debug("unpacking %s serially: snapshotter %s", self.name, self.snapshotter)
        below = chains[start - 1] if start else ""
        first = asyncio.ensure_future(
            self._direct(layers[start], diff_ids[start], chains[start], below, fetches[start])
        )
        staged = {
            i: asyncio.ensure_future(self._stage(i, layers[i], diff_ids[i], fetches[i]))
            for i in todo[1:]
            if parallel
        }
        used: set[int] = set()
        try:
            await first
            for i in todo[1:]:
                done: Staged | None = None
                if i in staged:
                    done = await staged[i]
                    used.add(i)
                else:
                    await fetches[i]
                await self._chain(layers[i], diff_ids[i], chains[i], chains[i - 1], done)
        finally:
            await self._cancel(first, staged, used)
            await asyncio.gather(*self.removals)

    async def _cancel(
        self,
        first: asyncio.Future[None],
        staged: Mapping[int, asyncio.Future[Staged | None]],
        used: set[int],
    ) -> None:
        """After a failure: the applies still running stop, temporary snapshots go."""
        first.cancel()
        for f in staged.values():
            f.cancel()
        await asyncio.gather(first, *staged.values(), return_exceptions=True)
        for i, f in staged.items():
            if i not in used and not f.cancelled() and f.exception() is None:
                got = f.result()
                if got is not None:
                    await self._remove(got.key)

    async def _exists(self, chain: str) -> bool:
        try:
            await self.ctrd.call(
                self.ctrd.snapshots.Stat,
                snapshots.StatSnapshotRequest(snapshotter=self.snapshotter, key=chain),
            )
            return True
        except ContainerNotFound:
            return False

    async def _prepare(self, key: str, parent: str) -> Sequence[Any]:
        got = await self.ctrd.call(
            self.ctrd.snapshots.Prepare,
            snapshots.PrepareSnapshotRequest(snapshotter=self.snapshotter, key=key, parent=parent),
            self.lease,
        )
        return list(got.mounts)

    async def _remove(self, key: str) -> None:
        with contextlib.suppress(RuntimeFailure, RuntimeUnavailable, ContainerNotFound):
            await self.ctrd.call(
                self.ctrd.snapshots.Remove,
                snapshots.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
            )

    async def _apply(self, layer: Descriptor, diff_id: str, mounts: Sequence[Any]) -> None:
        """The layer's blob applied onto the mounts, its unpacked digest checked."""
        try:
            got = await self.ctrd.call(
                self.ctrd.diff.Apply,
                diff.ApplyRequest(diff=desc_pb(layer), mounts=mounts),
                self.lease,
                deadline_s=APPLY_DEADLINE_S,
            )
        except RuntimeFailure as err:
            raise ImagePullError(f"unpack {self.name}: {err}") from None
        if got.applied.digest != diff_id:
            raise ImagePullError(
                f"unpack {self.name}: layer {layer.digest} unpacks to {got.applied.digest}, "
                f"the image config says {diff_id}"
            )

    async def _commit(self, chain: str, key: str) -> None:
        try:
            await self.ctrd.call(
                self.ctrd.snapshots.Commit,
                snapshots.CommitSnapshotRequest(snapshotter=self.snapshotter, name=chain, key=key),
                self.lease,
            )
        except RuntimeFailure as err:
            await self._remove(key)
            # Another pull (an image sharing these layers) committed it first: use it.
            if "already exists" not in str(err):
                raise ImagePullError(f"unpack {self.name}: {err}") from None

    async def _direct(
        self, layer: Descriptor, diff_id: str, chain: str, parent: str, fetched: Any
    ) -> None:
        """The lowest layer to unpack: applied straight into its snapshot on `parent`."""
        await fetched
        async with self.slots.take(-1):
            key = f"extract-{uuid.uuid4().hex}-{chain}"
            mounts = await self._prepare(key, parent)
            began = time.monotonic()
            try:
                await self._apply(layer, diff_id, mounts)
            except BaseException:
                await asyncio.shield(self._remove(key))
                raise
            await self._commit(chain, key)
            log.debug("%s: %s applied in place in %.2f s", self.name, layer.digest[:19],
                      time.monotonic() - began)  # fmt: skip

    async def _stage(
        self, order: int, layer: Descriptor, diff_id: str, fetched: Any
    ) -> Staged | None:
        """The layer applied into a temporary parentless snapshot, as an overlay
        upperdir; None (nothing left) if the snapshotter's mounts are not as expected."""
        await fetched
        async with self.slots.take(order):
            key = f"shoal-unpack-{uuid.uuid4().hex}"
            mounts = await self._prepare(key, "")
            tree = bind_source(mounts)
            try:
                if tree is None:
                    log.debug("unpacking %s serially: mounts %s", self.name, mounts)
                    await self._remove(key)
                    return None
                overlay = mount_pb2.Mount(
                    type="overlay", source="overlay", options=["rw", f"upperdir={tree}"]
                )
                began = time.monotonic()
                await self._apply(layer, diff_id, [overlay])
                log.debug("%s: %s applied aside in %.2f s", self.name, layer.digest[:19],
                          time.monotonic() - began)  # fmt: skip
            except BaseException:
                await asyncio.shield(self._remove(key))
                raise
            return Staged(key, tree)

    async def _chain(
        self, layer: Descriptor, diff_id: str, chain: str, parent: str, staged: Staged | None
    ) -> None:
        """The layer's snapshot on its parent: the staged tree moved in (or, without
        one, the layer applied there), committed; the temporary snapshot removed."""
        key = f"extract-{uuid.uuid4().hex}-{chain}"
        began = time.monotonic()
        try:
            mounts = await self._prepare(key, parent)
            try:
                upper = overlay_upper(mounts)
                if staged is not None and upper is not None:
                    move_tree(staged.tree, upper)
                else:
                    if staged is not None:
                        log.debug("unpacking %s serially: mounts %s", self.name, mounts)
                    await self._apply(layer, diff_id, mounts)
            except BaseException:
                await asyncio.shield(self._remove(key))
                raise
            await self._commit(chain, key)
            log.debug("%s: %s chained in %.2f s", self.name, layer.digest[:19],
                      time.monotonic() - began)  # fmt: skip
        except OSError as err:
            raise ImagePullError(f"unpack {self.name}: moving a layer in: {err}") from None
        finally:
            if staged is not None:
                self.removals.append(asyncio.ensure_future(self._remove(staged.key)))
