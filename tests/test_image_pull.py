"""Pulls through Shoal's registry client into a real containerd: a multi-layer image
unpacks in order and runs; a blob with the wrong bytes is refused and leaves nothing."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shoal.lab.containerd import Containerd
from shoal.lab.images import build_layer, build_layered_image, push_image
from shoal.lab.registry import Registry
from shoal.proto.containerd import content_pb2 as content
from shoal.proto.containerd import images_pb2 as images
from shoal.worker.runtime.base import ContainerConfig, ImagePullError
from shoal.worker.runtime.containerd import ContainerdRuntime

pytestmark = pytest.mark.integration


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def three_layers() -> dict[str, bytes]:
    """busybox, then a layer adding two files, then one replacing one of them."""
    return build_layered_image(
        [
            build_layer(),
            _layer({"data/a": b"a from layer 2\n", "data/b": b"b from layer 2\n"}),
            _layer({"data/b": b"b from layer 3\n"}),
        ],
        ["cat", "/data/a", "/data/b"],
    )


async def test_a_three_layer_image_pulls_unpacks_in_order_and_runs(
    containerd: Containerd, registry: Registry, tmp_path: Path
) -> None:
    blobs = three_layers()
    image = push_image(registry.addr, "layers", "v3", blobs)
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    try:
        await rt.pull(image)
        log = tmp_path / "c.log"
        await rt.create(ContainerConfig(container_id="c", image=image, log_path=log))
        await rt.start("c")
        assert await rt.wait("c") == 0
        out = log.read_text()
        assert "a from layer 2" in out and "b from layer 3" in out, out
        assert "b from layer 2" not in out, out
        # Every layer is in the content store with its uncompressed digest label.
        manifest = json.loads(blobs["manifest"])
        layers = manifest["layers"]
        diff_ids = json.loads(blobs[manifest["config"]["digest"]])["rootfs"]["diff_ids"]
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            got = await rt.ctrd.call(
                rt.ctrd.content.Info, content.InfoRequest(digest=layer["digest"])
            )
            assert got.info.labels["containerd.io/uncompressed"] == diff_id
        # ... and nothing else: the plain tars inflated for the unpacking are gone.
        listed = rt.ctrd.content.List(content.ListContentRequest(), metadata=rt.ctrd.md())
        stored = {i.digest async for resp in listed for i in resp.info}
        want = {x["digest"] for x in layers} | {manifest["config"]["digest"]}
        assert stored == want | {blobs["manifest_digest"].decode()}
        await rt.remove("c")
    finally:
        await rt.close()


class _CorruptingRegistry(http.server.BaseHTTPRequestHandler):
    """Serves an image whose last layer blob comes with one byte changed (or, with
    `extra`, with bytes appended): the manifest and config are right."""

    blobs: dict[str, bytes] = {}
    bad = ""
    extra = False

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if "/manifests/" in self.path:
            body, kind = self.blobs["manifest"], "application/vnd.oci.image.manifest.v1+json"
        elif name in self.blobs:
            body, kind = self.blobs[name], "application/octet-stream"
            if name == self.bad and self.extra:
                body += b"more"
            elif name == self.bad:
                body = body[:-9] + bytes([body[-9] ^ 1]) + body[-8:]
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def corrupting() -> Iterator[int]:
    _CorruptingRegistry.blobs = three_layers()
    layers = json.loads(_CorruptingRegistry.blobs["manifest"])["layers"]
    _CorruptingRegistry.bad = layers[-1]["digest"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CorruptingRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("extra", [False, True], ids=["flipped-byte", "too-long"])
async def test_a_blob_with_wrong_bytes_is_refused_and_leaves_nothing(
    containerd: Containerd, corrupting: int, tmp_path: Path, extra: bool
) -> None:
    _CorruptingRegistry.extra = extra
    rt = ContainerdRuntime(str(containerd.socket), f"test-{uuid.uuid4().hex[:8]}", tmp_path)
    image = f"127.0.0.1:{corrupting}/bad:v1"
    try:
        why = "is .* bytes, the registry sent more" if extra else "failed its digest check"
        with pytest.raises(ImagePullError, match=why):
            await rt.pull(image)
        ctrd = rt.ctrd
        # No half-written ingest, no blob of the image, no image record.
        active = await ctrd.call(ctrd.content.ListStatuses, content.ListStatusesRequest())
        assert [s.ref for s in active.statuses] == []
        listed = ctrd.content.List(content.ListContentRequest(), metadata=ctrd.md())
        left = [i.digest async for resp in listed for i in resp.info]
        assert left == [], left
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ctrd.images.Get(
                images.GetImageRequest(name=f"127.0.0.1:{corrupting}/bad:v1"),
                metadata=ctrd.md(),
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Positive control: the same server with the right bytes gives a good pull.
        _CorruptingRegistry.bad = ""
        await rt.pull(image)
    finally:
        await rt.close()
