"""The daemons' HTTP side: /metrics (Prometheus text format), /healthz, and
whatever else a daemon mounts (the manager's web view).

It runs inside the daemon's asyncio loop (aiohttp). Off unless `--http-addr` is
given; a bare port means loopback. On any other address it is HTTPS and every
client must show a certificate from the cluster CA (mTLS), like every other
remote access to a Shoal node.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# (ok, reason): what /healthz answers.
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]
SHUTDOWN_S = 2.0


class BadHttpAddr(ValueError):
    pass


@dataclass(frozen=True)
class HttpAddr:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_http_addr(text: str) -> HttpAddr:
    """`HOST:PORT`, `:PORT` or `PORT`; without a host it is loopback."""
    host, sep, port_s = text.strip().rpartition(":")
    if not sep:
        host, port_s = "", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise BadHttpAddr(f"bad --http-addr {text!r}: expected HOST:PORT, :PORT or PORT") from None
    if not 0 <= port <= 65535:
        raise BadHttpAddr(f"bad --http-addr {text!r}: port out of range")
    return HttpAddr(host, port)


def mtls_context(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the cluster CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert_pem, key_pem)
    return ctx


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """(Re)loads the server certificate; new handshakes use it (a renewal needs no restart).
    The ssl module reads only files: a private temporary directory holds them briefly."""
    with tempfile.TemporaryDirectory(prefix="shoal-http-tls-") as d:
        cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert.write_bytes(cert_pem)
        fd = os.open(key, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)


class HttpServer:
    """One aiohttp site: /metrics from `registry`, /healthz from `health`."""

    def __init__(
        self,
        addr: HttpAddr,
        registry: CollectorRegistry,
        health: HealthCheck,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not addr.loopback and ssl_context is None:
            raise BadHttpAddr(f"--http-addr {addr} is not loopback: it needs mTLS")
        self.addr = addr
        self.registry = registry
        self.health = health
        self.ssl_context = ssl_context
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self._runner: web.AppRunner | None = None
        self.port = addr.port

    async def _metrics(self, _request: web.Request) -> web.Response:
        # Collectors read cgroup files or walk the cache: off the loop's hot path
        # would need locks on that state, and one scrape is O(objects) anyway.
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        try:
            ok, reason = await asyncio.wait_for(self.health(), 5)
        except TimeoutError:
            ok, reason = False, "health check timed out"
        return web.Response(status=200 if ok else 503, text=(reason or "ok") + "\n")

    async def start(self) -> None:
        # No access log: Prometheus scrapes every few seconds.
        # A scrape or a log fetch in flight gets SHUTDOWN_S when the daemon stops.
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_S
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.addr.host,
            self.addr.port,
            ssl_context=self.ssl_context,
        )
        await site.start()
        # Port 0 picks a free port: tests read which one.
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        scheme = "https (mTLS)" if self.ssl_context else "http"
        log.info("%s on %s:%d", scheme, self.addr.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
