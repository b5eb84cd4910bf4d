"""Image tags are pinned to digests by the manager: a tag pushed again does not split
a service across two images, `update --force` moves it to the new one, and a
registry serving bytes that do not match their digest is refused."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.request

import pytest

from shoal.lab.images import build_image
from shoal.lab.registry import Registry
from shoal.registry import ImagePullError, RegistryClient

from . import test_containers
from .test_containers import Cluster

pytestmark = pytest.mark.integration
cluster = test_containers.cluster  # the fixture, shared


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(url: str, data: bytes, content_type: str) -> None:
    req = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": content_type}
    )
    urllib.request.urlopen(req, timeout=30).close()


def push_variant(registry: str, repo: str, tag: str, variant: str) -> str:
    """The test image with one more env var (another config, so another digest),
    pushed under `tag`; returns the manifest digest."""
    blobs = build_image()
    manifest = json.loads(blobs["manifest"])
    config = json.loads(blobs[manifest["config"]["digest"]])
    config["config"]["Env"].append(f"VARIANT={variant}")
    config_bytes = json.dumps(config).encode()
    base = f"http://{registry}/v2/{repo}"
    for data in [config_bytes, *(blobs[layer["digest"]] for layer in manifest["layers"])]:
        start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
        with urllib.request.urlopen(start, timeout=30) as resp:
            location = resp.headers["Location"]
        if location.startswith("/"):
            location = f"http://{registry}{location}"
        sep = "&" if "?" in location else "?"
        put(f"{location}{sep}digest={sha(data)}", data, "application/octet-stream")
    manifest["config"].update(digest=sha(config_bytes), size=len(config_bytes))
    body = json.dumps(manifest).encode()
    put(f"{base}/manifests/{tag}", body, "application/vnd.oci.image.manifest.v1+json")
    return sha(body)


def images(c: Cluster, service: str) -> set[str]:
    return {t["image"] for t in c.live(service)}


def test_tag_pushed_again_does_not_split_a_service(cluster: Cluster, registry: Registry) -> None:
    c = cluster
    first = push_variant(registry.addr, "app", "v1", "one")
    ref = f"{registry.addr}/app:v1"
    c.ctl(
        "service",
        "create",
        "--name",
        "app",
        "--image",
        ref,
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        "sleep",
        "1000",
    )
    assert images(c, "app") == {f"{ref}@{first}"}
    svc = c.ctl("service", "inspect", "app", "--format", "json")
    assert svc["image"] == ref  # type: ignore[index]  # as the user gave it

    second = push_variant(registry.addr, "app", "v1", "two")
    assert second != first
    c.ctl("service", "scale", "app=4")
    assert images(c, "app") == {f"{ref}@{first}"}  # new replicas: the same bytes

    c.ctl("service", "update", "app", "--force")
    c.wait(lambda: images(c, "app") == {f"{ref}@{second}"}, 60)
    assert len(c.live("app")) == 4


def test_unreachable_registry_leaves_the_service_unpinned_with_a_warning(
    cluster: Cluster,
) -> None:
    got = cluster.m.ctl(
        "service", "create", "--name", "far", "--image", "127.0.0.1:9/nowhere:1", "-d", "sleep", "1"
    )
    assert got.code == 0, got.err
    assert "warning:" in got.err and "unpinned" in got.err
    tasks = cluster.tasks("far")
    assert all(t["image"] == "127.0.0.1:9/nowhere:1" for t in tasks)


class _LyingRegistry(http.server.BaseHTTPRequestHandler):
    """Serves a real manifest under a Docker-Content-Digest header it does not have."""

    manifest = build_image()["manifest"]

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Docker-Content-Digest", "sha256:" + "0" * 64)
        self.send_header("Content-Length", str(len(self.manifest)))
        self.end_headers()
        self.wfile.write(self.manifest)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_manifest_that_does_not_match_its_digest_is_refused() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LyingRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = RegistryClient()
    try:
        with pytest.raises(ImagePullError, match="the manifest's digest is"):
            await client.resolve(f"127.0.0.1:{server.server_port}/app:v1")
        # Positive control: asked for by the digest the bytes really have, the same
        # answer is accepted (the bytes decide, not the header).
        real = sha(_LyingRegistry.manifest)
        resolved = await client.resolve(f"127.0.0.1:{server.server_port}/app:v1@{real}")
        assert resolved.target.digest == real
    finally:
        await client.close()
        server.shutdown()
        server.server_close()
