"""A gRPC connection to etcd's v3 API (stubs from aetcd), with TLS and several endpoints.

aetcd's own Client speaks plaintext to one host only; Shoal builds the channel
itself and uses aetcd's generated stubs, so TLS, endpoint failover and
deadlines are decided here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
import grpc.aio
from aetcd import rpc

# Every unary etcd call gets a deadline so a dead etcd never hangs a manager.
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class EtcdTLS:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
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


class EtcdConnection:
    """One channel to the etcd cluster and the stubs on it."""

    def __init__(
        self,
        endpoints: list[str],
        tls: EtcdTLS | None = None,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
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
        if tls is not None:
            self.channel = grpc.aio.secure_channel(
                target, tls.credentials(), options=options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(
                target, options=options, interceptors=interceptors
            )
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()
