"""A gRPC connection to etcd's v3 API (stubs from aetcd), with TLS and several endpoints.

aetcd's own Client speaks plaintext to one host only; Shoal builds the channel
itself and uses aetcd's generated stubs, so TLS, endpoint failover, etcd's
user/password auth and deadlines are decided here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio
from aetcd import rpc

# Every unary etcd call gets a deadline so a dead etcd never hangs a manager.
CALL_TIMEOUT_S = 10.0


PASSWORD_ENV = "SHOAL_ETCD_PASSWORD"


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to etcd: a CA to trust (None: the system's roots) and a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


def parse_endpoints(endpoints: str | list[str]) -> list[str]:
    """`http://127.0.0.1:2379,https://h:2379` -> ["127.0.0.1:2379", "h:2379"]."""
    items = endpoints.split(",") if isinstance(endpoints, str) else endpoints
    out: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        parsed = urlparse(item if "://" in item else f"http://{item}")
        if not parsed.hostname or not parsed.port:
            raise ValueError(f"bad etcd endpoint {item!r}: expected http(s)://HOST:PORT")
        out.append(f"{parsed.hostname}:{parsed.port}")
    if not out:
        raise ValueError("no etcd endpoints given")
    return out


def endpoints_use_tls(endpoints: str) -> bool:
    """True for https:// endpoints; schemes may not be mixed."""
    schemes = {
        urlparse(i.strip()).scheme if "://" in i else "http"
        for i in endpoints.split(",")
        if i.strip()
    }
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://")
    return schemes == {"https"}


@dataclass(frozen=True)
class EtcdAuth:
    """etcd's user/password auth: a token from Authenticate rides on every call."""

    user: str
    password: str


def client_config(
    endpoints: str,
    cacert: Path | None,
    cert: Path | None,
    key: Path | None,
    user: str = "",
    password_file: Path | None = None,
) -> tuple[list[str], EtcdTLS | None, EtcdAuth | None]:
    """`swarmd manager`'s etcd flags -> endpoints, TLS and auth; ValueError says what is wrong.

    https:// endpoints, or any of the TLS files, mean TLS; a client certificate
    works with or without --etcd-cacert (without it the system's roots are trusted).
    """
    hosts = parse_endpoints(endpoints)
    if (cert is None) != (key is None):
        raise ValueError("--etcd-cert and --etcd-key go together")
    tls = None
    if endpoints_use_tls(endpoints) or cacert or cert:
        tls = EtcdTLS(cacert, cert, key)
    auth = None
    password = os.environ.get(PASSWORD_ENV, "")
    if password_file is not None:
        password = password_file.read_text().rstrip("\n")
    if user:
        if not password:
            raise ValueError(f"--etcd-user needs --etcd-password-file or ${PASSWORD_ENV}")
        auth = EtcdAuth(user, password)
    elif password_file is not None:
        raise ValueError("--etcd-password-file needs --etcd-user")
    return hosts, tls, auth


class _AuthToken:
    """Fetches etcd's auth token once and again when etcd says it expired."""

    def __init__(self, channel: grpc.aio.Channel, auth: EtcdAuth) -> None:
        self._stub = rpc.AuthStub(channel)
        self._auth = auth
        self._token = ""
        self._lock = asyncio.Lock()

    async def get(self, stale: str = "") -> str:
        async with self._lock:
            if not self._token or self._token == stale:
                resp = await self._stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._auth.user, password=self._auth.password),
                    timeout=CALL_TIMEOUT_S,
                )
                self._token = resp.token
            return self._token


def _with_token(details: Any, token: str) -> Any:
    metadata = [(k, v) for k, v in (details.metadata or ()) if k != "token"]
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        [*metadata, ("token", token)],
        details.credentials,
        details.wait_for_ready,
    )


def _token_expired(err: grpc.aio.AioRpcError) -> bool:
    return err.code() == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in (
        err.details() or ""
    )


class _UnaryAuth(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: _AuthToken) -> None:
        self.token = token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        token = await self.token.get()
        try:
            return await (await continuation(_with_token(details, token), request))
        except grpc.aio.AioRpcError as err:
            if not _token_expired(err):
                raise
            token = await self.token.get(stale=token)
            return await (await continuation(_with_token(details, token), request))


class _StreamAuth(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Watches and lease keep-alives carry the current token; the unary calls that
    run all the time alongside them renew it when etcd says it expired."""

    def __init__(self, token: _AuthToken) -> None:
        self.token = token

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        token = await self.token.get()
        return await continuation(_with_token(details, token), request_iterator)


class EtcdConnection:
    """One channel to the etcd cluster and the stubs on it."""

    def __init__(
        self, endpoints: list[str], tls: EtcdTLS | None = None, auth: EtcdAuth | None = None
    ) -> None:
        self.endpoints = endpoints
        # The ipv4/dns resolvers take one address; for several we use a static
        # list with round_robin so a dead member is skipped.
        if len(endpoints) == 1:
            target = endpoints[0]
        else:
            target = "ipv4:" + ",".join(endpoints)
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        interceptors: list[Any] = []
        if auth is not None:
            # The token comes over a channel of its own, so the interceptors never recurse.
            self._auth_channel = self._channel(target, tls, options, [])
            token = _AuthToken(self._auth_channel, auth)
            interceptors = [_UnaryAuth(token), _StreamAuth(token)]
        self.channel = self._channel(target, tls, options, interceptors)
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

    @staticmethod
    def _channel(
        target: str, tls: EtcdTLS | None, options: list[tuple[str, Any]], interceptors: list[Any]
    ) -> grpc.aio.Channel:
        if tls is not None:
            return grpc.aio.secure_channel(
                target, tls.credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)

    async def close(self) -> None:
        await self.channel.close()
        if hasattr(self, "_auth_channel"):
            await self._auth_channel.close()
