"""Pulling images from OCI/Docker registries (distribution API v2), asyncio + httpx.

Resolves a reference, fetches the manifest (an index/manifest list is narrowed
to this machine's platform), then the config and layer blobs, checking every
digest, the top-level manifest's too (never the registry's header alone). Plain
HTTP for loopback registries and those named insecure; HTTPS with Bearer token
auth otherwise. Shared: agents pull with it, managers pin tags to digests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import platform
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx


class ImagePullError(Exception):
    """The image could not be resolved or pulled; the message is the registry's reason."""


OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
DOCKER_HUB = "registry-1.docker.io"
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def this_platform() -> tuple[str, str]:
    return "linux", _ARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str = "latest"
    digest: str = ""

    @property
    def name(self) -> str:
        """containerd's image name: the normalized full reference."""
        base = f"{self.registry if self.registry != DOCKER_HUB else 'docker.io'}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"

    @property
    def target(self) -> str:
        return self.digest or self.tag


def parse_reference(ref: str) -> Reference:
    name, _, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
        if "/" not in path:
            path = f"library/{path}"
    tag = "latest"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, _, tag = path.rpartition(":")
    if not path or not re.match(r"^[a-z0-9]", path):
        raise ImagePullError(f"invalid image reference {ref!r}")
    return Reference(registry, path, tag, digest)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ResolvedImage:
    ref: Reference
    # What the image record points at: the index if there is one, else the manifest.
    target: Descriptor
    manifest: Descriptor
    manifest_body: bytes
    config: Descriptor
    layers: list[Descriptor]
    index_body: bytes | None = None


def _is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _desc(d: dict[str, Any]) -> Descriptor:
    return Descriptor(d["mediaType"], d["digest"], int(d["size"]), d.get("annotations") or {})


class RegistryClient:
    def __init__(self, insecure: set[str] | None = None, timeout_s: float = 60.0) -> None:
        self.insecure = insecure or set()
        self.http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=True)
        self._tokens: dict[tuple[str, str], str] = {}

    async def close(self) -> None:
        await self.http.aclose()

    def _base(self, ref: Reference) -> str:
        scheme = "http" if _is_loopback(ref.registry) or ref.registry in self.insecure else "https"
        return f"{scheme}://{ref.registry}/v2/{ref.repository}"

    async def _get(self, ref: Reference, path: str, accept: str = "") -> httpx.Response:
        url = f"{self._base(ref)}/{path}"
        headers = {"Accept": accept} if accept else {}
        token = self._tokens.get((ref.registry, ref.repository))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = await self.http.get(url, headers=headers)
            if resp.status_code == 401 and "Bearer" in resp.headers.get("www-authenticate", ""):
                token = await self._token(ref, resp.headers["www-authenticate"])
                headers["Authorization"] = f"Bearer {token}"
                resp = await self.http.get(url, headers=headers)
        except httpx.HTTPError as err:
            raise ImagePullError(f"pull {ref.name}: {type(err).__name__}: {err}") from None
        if resp.status_code >= 400:
            raise ImagePullError(f"pull {ref.name}: {_registry_error(resp)}")
        return resp

    async def _token(self, ref: Reference, challenge: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        if not realm:
            raise ImagePullError(f"pull {ref.name}: registry asked for auth without a realm")
        try:
            resp = await self.http.get(realm, params=params)
        except httpx.HTTPError as err:
            raise ImagePullError(f"pull {ref.name}: token: {err}") from None
        if resp.status_code >= 400:
            raise ImagePullError(f"pull {ref.name}: token: {_registry_error(resp)}")
        body = resp.json()
        token = str(body.get("token") or body.get("access_token") or "")
        self._tokens[(ref.registry, ref.repository)] = token
        return token

    async def resolve(self, image: str) -> ResolvedImage:
        ref = parse_reference(image)
        resp = await self._get(ref, f"manifests/{ref.target}", ACCEPT)
        body = resp.content
        media = resp.headers.get("content-type", "").split(";")[0] or json.loads(body).get(
            "mediaType", OCI_MANIFEST
        )
        digest = _sha256(body)
        claimed = ref.digest or resp.headers.get("docker-content-digest")
        if claimed and claimed != digest:
            raise ImagePullError(
                f"pull {ref.name}: the manifest's digest is {digest}, not {claimed}"
            )
        top = Descriptor(media, digest, len(body))
        index_body = None
        if media in INDEX_TYPES:
            index_body = body
            wanted = this_platform()
            chosen = next(
                (
                    m
                    for m in json.loads(body).get("manifests", [])
                    if (m.get("platform", {}).get("os"), m.get("platform", {}).get("architecture"))
                    == wanted
                ),
                None,
            )
            if chosen is None:
                raise ImagePullError(f"pull {ref.name}: no manifest for {'/'.join(wanted)}")
            manifest = _desc(chosen)
            body = (await self._get(ref, f"manifests/{manifest.digest}", ACCEPT)).content
            _verify(ref, manifest, body)
        else:
            manifest = top
        doc = json.loads(body)
        return ResolvedImage(
            ref=ref,
            target=top,
            manifest=manifest,
            manifest_body=body,
            config=_desc(doc["config"]),
            layers=[_desc(x) for x in doc.get("layers", [])],
            index_body=index_body,
        )

    async def blob(self, ref: Reference, desc: Descriptor) -> bytes:
        data = (await self._get(ref, f"blobs/{desc.digest}")).content
        _verify(ref, desc, data)
        return data

    async def blob_stream(
        self, ref: Reference, desc: Descriptor, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """The blob in chunks as they arrive, hashed on the way; its size and digest are
        checked before the last chunk's consumer gets the end of the stream (ImagePullError
        then), and a registry sending more than the size is cut off."""
        url = f"{self._base(ref)}/blobs/{desc.digest}"
        headers = {}
        token = self._tokens.get((ref.registry, ref.repository))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        h = hashlib.sha256()
        got = 0
        try:
            async with self.http.stream("GET", url, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise ImagePullError(f"pull {ref.name}: {_registry_error(resp)}")
                async for chunk in resp.aiter_bytes(chunk_size):
                    got += len(chunk)
                    if got > desc.size:
                        break
                    h.update(chunk)
                    yield chunk
        except httpx.HTTPError as err:
            raise ImagePullError(f"pull {ref.name}: {type(err).__name__}: {err}") from None
        if got != desc.size:
            raise ImagePullError(
                f"pull {ref.name}: blob {desc.digest} is {desc.size} bytes, the registry sent "
                f"{'more' if got > desc.size else got}"
            )
        if f"sha256:{h.hexdigest()}" != desc.digest:
            raise ImagePullError(f"pull {ref.name}: blob {desc.digest} failed its digest check")


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _verify(ref: Reference, desc: Descriptor, data: bytes) -> None:
    if _sha256(data) != desc.digest:
        raise ImagePullError(f"pull {ref.name}: {desc.digest} failed its digest check")


def _registry_error(resp: httpx.Response) -> str:
    """The registry's own words: `manifest unknown: manifest unknown` (HTTP 404)."""
    try:
        errors = resp.json().get("errors") or []
    except ValueError:
        errors = []
    if errors:
        parts = [
            f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}" for e in errors
        ]
        return f"{'; '.join(parts)} (HTTP {resp.status_code})"
    return f"HTTP {resp.status_code} {resp.reason_phrase}"


def pinned_reference(image: str, digest: str) -> str:
    """`app:1` + `sha256:...` -> `app:1@sha256:...` (the tag stays, for people)."""
    return f"{image.partition('@')[0]}@{digest}"
