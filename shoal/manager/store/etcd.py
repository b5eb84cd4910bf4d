"""A gRPC connection to etcd's v3 API (stubs from aetcd), with TLS and several endpoints.

aetcd's own Client speaks plaintext to one host only; Shoal builds the channel
itself and uses aetcd's generated stubs, so TLS, endpoint failover, etcd's
user/password auth and deadlines are decided here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio
from aetcd import rpc

log = logging.getLogger(__name__)

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
    """Channels to the etcd cluster and the stubs on the one in use.

    Several https:// members get one channel each: TLS checks a member's certificate
    against the address dialled, and one gRPC channel over a static address list has a
    single authority (the whole list), so no member would pass. Calls go to the current
    member; a call that finds it unavailable or too slow (failover()) moves the next calls
    on to the next member. Plain http:// members share one round_robin channel.
    """

    def __init__(
        self,
        endpoints: list[str],
        tls: EtcdTLS | None = None,
        auth: EtcdAuth | None = None,
        observers: list[Any] | None = None,
    ) -> None:
        self.endpoints = endpoints
        # The ipv4/dns resolvers take one address; for several we use a static
        # list with round_robin so a dead member is skipped.
        if len(endpoints) == 1 or tls is not None:
            targets = endpoints
        else:
            targets = ["ipv4:" + ",".join(endpoints)]
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[tuple[Any, Any, Any, Any]] = []
        self._members: list[grpc.aio.Channel] = []
        for target in targets:
            interceptors: list[Any] = []
            if auth is not None:
                # The token comes over a channel of its own, so the interceptors never
                # recurse; one per member (etcd's simple tokens are a member's own).
                auth_channel = self._channel(target, tls, options, [])
                self._channels.append(auth_channel)
                token = _AuthToken(auth_channel, auth)
                interceptors = [_UnaryAuth(token), _StreamAuth(token)]
            # Observers (the manager's etcd request timer) see every call, after auth.
            interceptors += observers or []
            channel = self._channel(target, tls, options, interceptors)
            self._channels.append(channel)
            self._members.append(channel)
            self._stubs.append(
                (
                    rpc.KVStub(channel),
                    rpc.WatchStub(channel),
                    rpc.LeaseStub(channel),
                    rpc.MaintenanceStub(channel),
                )
            )
        self.current = 0

    @property
    def channel(self) -> grpc.aio.Channel:
        """The current member's channel (for stubs of other etcd services)."""
        return self._members[self.current]

    @property
    def kv(self) -> Any:
        return self._stubs[self.current][0]

    @property
    def watch(self) -> Any:
        return self._stubs[self.current][1]

    @property
    def lease(self) -> Any:
        return self._stubs[self.current][2]

    @property
    def maintenance(self) -> Any:
        return self._stubs[self.current][3]

    @property
    def wait_for_ready(self) -> bool:
        """One channel: a call waits out a reconnect (an etcd restart) within its deadline.
        One per member: it fails at once, and the next call tries the next member."""
        return len(self._stubs) == 1

    def failover(self, failed: int) -> None:
        """A call on member `failed` found it unavailable: the next calls go to the next
        member (once: the calls that failed alongside it do not skip a good one)."""
        if failed == self.current and len(self._stubs) > 1:
            self.current = (failed + 1) % len(self._stubs)
            ends = self.endpoints
            log.warning("etcd: %s unavailable, using %s", ends[failed], ends[self.current])

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
        for channel in self._channels:
            await channel.close()
