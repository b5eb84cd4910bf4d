"""Images in containerd: resolved and pulled by Shoal's registry client, not `ctr`.

Blobs stream into containerd's content store under a lease, with the garbage
collection labels containerd's own client sets, their digests checked on the way
(a bad blob is never committed, its ingest aborted). Layers download in parallel
and are unpacked (shoal/worker/runtime/unpack.py: applied in parallel as they come in,
chained in order), while the later ones still download; the image is then recorded.
An image already in containerd, content and snapshots complete, is used as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2

from shoal.proto.containerd import content_pb2 as content
from shoal.proto.containerd import images_pb2 as images
from shoal.proto.containerd import snapshots_pb2 as snapshots
from shoal.registry import (
    INDEX_TYPES,
    Descriptor,
    RegistryClient,
    ResolvedImage,
    parse_reference,
    this_platform,
)
from shoal.worker.runtime.base import (
    ContainerNotFound,
    ImagePullError,
    RuntimeFailure,
    RuntimeUnavailable,
)
from shoal.worker.runtime.connection import CALL_TIMEOUT_S, Containerd
from shoal.worker.runtime.unpack import Unpacker, chain_ids, desc_pb

log = logging.getLogger(__name__)

WRITE_CHUNK = 1 << 20
# Layers downloading at once (as `ctr image pull`: more only slow the lowest layers,
# which the unpacking waits for, when the download is CPU-bound as on loopback).
FETCHES = 3


@dataclass(frozen=True)
class ImageInfo:
    """What a container needs of its image: the config and the top layer's chain ID."""

    name: str
    config: dict[str, Any]
    chain_id: str


@dataclass
class PullStats:
    """Totals of image pulls from registries (the agent's metrics read them)."""

    pulls: int = 0
    bytes: int = 0
    seconds: float = 0.0


class ImageStore:
    """The images of one containerd namespace: each pulled once, however many tasks
    want it at the same time."""

    def __init__(self, ctrd: Containerd, registry: RegistryClient, snapshotter: str) -> None:
        self.ctrd = ctrd
        self.registry = registry
        self.snapshotter = snapshotter
        self._images: dict[str, ImageInfo] = {}
        self._pulls: dict[str, asyncio.Future[ImageInfo]] = {}
        self.stats = PullStats()
        # image -> [layer bytes fetched, layer bytes in all], while it is being pulled.
        self.progress: dict[str, list[int]] = {}

    async def get(self, image: str) -> ImageInfo:
        """The image's info, pulling it first if containerd does not have it."""
        cached = self._images.get(image)
        if cached is not None:
            return cached
        running = self._pulls.get(image)
        if running is None:
            # One pull per image at a time, however many tasks want it.
            running = asyncio.ensure_future(self._load_or_pull(image))
            self._pulls[image] = running
            running.add_done_callback(lambda _: self._pulls.pop(image, None))
        info = await asyncio.shield(running)
        self._images[image] = info
        return info

    async def _load_or_pull(self, image: str) -> ImageInfo:
        try:
            name = parse_reference(image).name
        except ImagePullError:
            raise
        with contextlib.suppress(ContainerNotFound):
            got = await self.ctrd.call(self.ctrd.images.Get, images.GetImageRequest(name=name))
            info = await self._info_from_store(name, got.image.target)
            if info is not None:
                return info
        return await self._pull(image)

    async def _read(self, digest: str) -> bytes:
        chunks = []
        call = self.ctrd.content.Read(
            content.ReadContentRequest(digest=digest),
            metadata=self.ctrd.md(),
            timeout=CALL_TIMEOUT_S,
        )
        try:
            async for resp in call:
                chunks.append(resp.data)
        except grpc.aio.AioRpcError as err:
            raise ContainerNotFound(f"content {digest}: {err.details()}") from None
        return b"".join(chunks)

    async def _info_from_store(self, name: str, target: Any) -> ImageInfo | None:
        """An image already in containerd, if its content and snapshots are all there."""
        try:
            manifest_digest = target.digest
            if target.media_type in INDEX_TYPES:
                index = json.loads(await self._read(target.digest))
                wanted = this_platform()
                manifest_digest = next(
                    m["digest"]
                    for m in index["manifests"]
                    if (m.get("platform", {}).get("os"), m.get("platform", {}).get("architecture"))
                    == wanted
                )
            manifest = json.loads(await self._read(manifest_digest))
            config = json.loads(await self._read(manifest["config"]["digest"]))
            top = chain_ids(config["rootfs"]["diff_ids"])[-1]
            await self.ctrd.call(
                self.ctrd.snapshots.Stat,
                snapshots.StatSnapshotRequest(snapshotter=self.snapshotter, key=top),
            )
        except (ContainerNotFound, KeyError, StopIteration, IndexError, ValueError):
            return None
        return ImageInfo(name, config, top)

    async def _pull(self, image: str) -> ImageInfo:
        started = time.monotonic()
        try:
            return await self._pull_image(image)
        finally:
            self.progress.pop(image, None)
            self.stats.pulls += 1
            self.stats.seconds += time.monotonic() - started

    async def _pull_image(self, image: str) -> ImageInfo:
        resolved = await self.registry.resolve(image)
        async with self.ctrd.lease("pull") as lease:
            config_bytes = await self.registry.blob(resolved.ref, resolved.config)
            config = json.loads(config_bytes)
            diff_ids = config.get("rootfs", {}).get("diff_ids", [])
            if len(diff_ids) != len(resolved.layers):
                raise ImagePullError(f"pull {image}: config and manifest disagree on layers")
            chains = chain_ids(diff_ids)
            # Every layer downloads at once (FETCHES at a time, in order) straight into
            # the content store; layer N unpacks as soon as it and layer N-1 are in.
            slots = asyncio.Semaphore(FETCHES)
            progress = self.progress[image] = [0, sum(layer.size for layer in resolved.layers)]
            fetches = [
                asyncio.ensure_future(
                    self._fetch(
                        resolved,
                        layer,
                        lease,
                        {"containerd.io/uncompressed": d},
                        slots,
                        progress,
                    )
                )
                for layer, d in zip(resolved.layers, diff_ids, strict=True)
            ]
            try:
                unpacker = Unpacker(self.ctrd, self.snapshotter, resolved.ref.name, lease)
                await unpacker.unpack(resolved.layers, diff_ids, fetches)
                await asyncio.gather(*fetches)
            finally:
                for f in fetches:
                    f.cancel()
                await asyncio.gather(*fetches, return_exceptions=True)
            await self._write_records(resolved, config_bytes, chains[-1], lease)
            log.info("pulled %s (%d layers)", resolved.ref.name, len(resolved.layers))
            return ImageInfo(resolved.ref.name, config, chains[-1])

    async def _write_records(
        self, resolved: ResolvedImage, config_bytes: bytes, top: str, lease: str
    ) -> None:
        """The config, manifest (and index) with the labels that keep the layers and the
        snapshot chain from containerd's GC, then the image record naming them."""
        refs = {"containerd.io/gc.ref.content.config": resolved.config.digest}
        refs.update(
            {
                f"containerd.io/gc.ref.content.l.{i}": layer.digest
                for i, layer in enumerate(resolved.layers)
            }
        )
        writes = [
            self._write(
                config_bytes,
                resolved.config,
                lease,
                {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": top},
            ),
            self._write(resolved.manifest_body, resolved.manifest, lease, refs),
        ]
        if resolved.index_body is not None:
            writes.append(
                self._write(
                    resolved.index_body,
                    resolved.target,
                    lease,
                    {"containerd.io/gc.ref.content.m.0": resolved.manifest.digest},
                )
            )
        await asyncio.gather(*writes)
        record = images.Image(name=resolved.ref.name, target=desc_pb(resolved.target))
        try:
            await self.ctrd.call(self.ctrd.images.Create, images.CreateImageRequest(image=record))
        except RuntimeFailure:
            await self.ctrd.call(self.ctrd.images.Update, images.UpdateImageRequest(image=record))

    async def _exists(self, digest: str) -> bool:
        try:
            await self.ctrd.call(self.ctrd.content.Info, content.InfoRequest(digest=digest))
            return True
        except ContainerNotFound:
            return False

    async def _fetch(
        self,
        resolved: ResolvedImage,
        desc: Descriptor,
        lease: str,
        labels: dict[str, str],
        slots: asyncio.Semaphore,
        progress: list[int],
    ) -> None:
        async with slots:
            if await self._exists(desc.digest):
                progress[0] += desc.size
                return

            async def counted() -> AsyncIterator[bytes]:
                async for chunk in self.registry.blob_stream(resolved.ref, desc):
                    progress[0] += len(chunk)
                    yield chunk

            await self._write_stream(counted(), desc, lease, labels)
            self.stats.bytes += desc.size

    async def _write(
        self, data: bytes, desc: Descriptor, lease: str, labels: dict[str, str]
    ) -> None:
        if await self._exists(desc.digest):
            # Already there: make sure it carries the GC labels (they keep it alive).
            await self.ctrd.call(
                self.ctrd.content.Update,
                content.UpdateRequest(
                    info=content.Info(digest=desc.digest, labels=labels),
                    update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
                ),
            )
            return

        async def one() -> AsyncIterator[bytes]:
            for i in range(0, len(data), WRITE_CHUNK):
                yield data[i : i + WRITE_CHUNK]

        await self._write_stream(one(), desc, lease, labels)

    async def _write_stream(
        self, chunks: AsyncIterator[bytes], desc: Descriptor, lease: str, labels: dict[str, str]
    ) -> None:
        """The chunks into the content store as they come; committed (with the labels)
        only once the source has checked its digest: a bad blob is never committed and
        its ingest is aborted."""
        ref = f"shoal-{desc.digest}"
        failed: list[ImagePullError] = []

        async def requests() -> AsyncIterator[content.WriteContentRequest]:
            offset = 0
            try:
                async for chunk in chunks:
                    yield content.WriteContentRequest(
                        action=content.WRITE,
                        ref=ref,
                        total=desc.size,
                        expected=desc.digest,
                        offset=offset,
                        data=chunk,
                    )
                    offset += len(chunk)
            except ImagePullError as err:
                failed.append(err)  # ends the stream without the commit
                return
            yield content.WriteContentRequest(
                action=content.COMMIT,
                ref=ref,
                total=desc.size,
                expected=desc.digest,
                offset=offset,
                labels=labels,
            )

        call = self.ctrd.content.Write(requests(), metadata=self.ctrd.md(lease))
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            await self._abort(ref)
            why = ImagePullError(f"storing {desc.digest}: {err.details()}")
            raise (failed or [why])[0] from None
        except BaseException:
            call.cancel()  # a cancelled pull: its ingest goes too
            await asyncio.shield(self._abort(ref))
            raise
        if failed:
            await self._abort(ref)
            raise failed[0]

    async def _abort(self, ref: str) -> None:
        with contextlib.suppress(ContainerNotFound, RuntimeFailure, RuntimeUnavailable):
            await self.ctrd.call(self.ctrd.content.Abort, content.AbortRequest(ref=ref))
