"""A node's identity: its key, certificate, the cluster CA and its node id.

Joining pins the CA by the digest in the join token: the manager's TLS chain
carries the root, and only a root whose SHA-256 matches is trusted. The
certificate is then requested over TLS verified against that root.
"""

from __future__ import annotations

import _ssl
import asyncio
import datetime
import hashlib
import logging
import os
import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.manager import ca
from shoal.proto import ca_pb2, ca_pb2_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 15.0


class JoinError(Exception):
    """A join that did not succeed; `transient` when trying again later may work (the
    manager was busy or unreachable), not when the token or the CSR was refused."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# Joins queue on the manager (bounded concurrency), so a join may wait its turn.
JOIN_TIMEOUT_S = 60.0
_TRANSIENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def channel_options() -> list[tuple[str, object]]:
    return [
        ("grpc.ssl_target_name_override", ca.MANAGER_SERVER_NAME),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


@dataclass
class NodeIdentity:
    node_id: str
    role: pb.NodeRole.ValueType
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )

    def channel(self, addr: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(addr, self.credentials(), options=channel_options())

    @staticmethod
    def load(state_dir: Path) -> NodeIdentity | None:
        d = state_dir / "certificates"
        files = [d / "node.key", d / "node.crt", d / "ca.crt"]
        if not all(f.exists() for f in files):
            return None
        cert_pem = files[1].read_bytes()
        ident = ca.identity_of(cert_pem)
        if ident is None:
            return None
        return NodeIdentity(
            ident.node_id, ident.role, files[0].read_bytes(), cert_pem, files[2].read_bytes()
        )

    def save(self, state_dir: Path) -> None:
        d = state_dir / "certificates"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, data, mode in (
            ("node.key", self.key_pem, 0o600),
            ("node.crt", self.cert_pem, 0o644),
            ("ca.crt", self.ca_pem, 0o644),
        ):
            tmp = d / f".{name}.tmp"
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(d / name)
        (state_dir / "node_id").write_text(self.node_id)

    def renew_at(self) -> datetime.datetime:
        """A random point at 50-80% of the certificate's life, like SwarmKit."""
        start, end = ca.cert_lifetime(self.cert_pem)
        return start + (end - start) * random.uniform(0.5, 0.8)


def join_addr_for(addr: str) -> str:
    """A manager's CA join endpoint: the port after its mTLS port (see manager.join_addr_for)."""
    host, port = split_addr(addr)
    return f"{host}:{port + 1}"


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise JoinError(f"bad manager address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def fetch_pinned_ca(addr: str, digest: str, timeout_s: float = 10.0) -> bytes:
    """The cluster root CA from the manager's TLS chain, if its digest matches the token."""
    host, port = split_addr(addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Nothing is trusted yet: the chain is checked against the pinned digest instead.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            ctx.wrap_socket(sock, server_hostname=ca.MANAGER_SERVER_NAME) as tls,
        ):
            # Python 3.13 names this get_unverified_chain(); 3.11 has it on _sslobj.
            chain = tls._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
            ders = [c.public_bytes(_ssl.ENCODING_DER) for c in chain]
    except OSError as err:
        raise JoinError(f"cannot reach the manager at {addr}: {err}", transient=True) from None
    for der in ders:
        if hashlib.sha256(der).hexdigest() == digest:
            cert = x509.load_der_x509_certificate(der)
            return cert.public_bytes(serialization.Encoding.PEM)
    raise JoinError(
        f"the manager at {addr} did not present the CA named in the join token "
        "(CA digest mismatch): refusing to join"
    )


async def join(addr: str, token: str, hostname: str) -> NodeIdentity:
    """Joins the cluster: pins the CA, sends a CSR with the token, gets a certificate."""
    try:
        parsed = ca.parse_join_token(token)
    except ValueError as err:
        raise JoinError(str(err)) from None
    join_addr = join_addr_for(addr)
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, join_addr, parsed.digest)
    key = ca.new_key()
    channel = grpc.aio.secure_channel(
        join_addr,
        grpc.ssl_channel_credentials(root_certificates=ca_pem),
        options=channel_options(),
    )
    try:
        resp = await ca_pb2_grpc.NodeCAStub(channel).IssueNodeCertificate(
            ca_pb2.IssueNodeCertificateRequest(
                csr_pem=ca.new_csr(key), token=token, hostname=hostname
            ),
            timeout=JOIN_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as err:
        raise JoinError(
            f"join refused by {join_addr}: {err.details()}", err.code() in _TRANSIENT
        ) from None
    finally:
        await channel.close()
    return NodeIdentity(resp.node_id, resp.role, ca.key_pem(key), resp.cert_pem, resp.ca_cert_pem)


async def renew(ident: NodeIdentity, addr: str) -> NodeIdentity:
    key = ca.new_key()
    channel = ident.channel(addr)
    try:
        resp = await ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
            ca_pb2.RenewNodeCertificateRequest(csr_pem=ca.new_csr(key)), timeout=CALL_TIMEOUT_S
        )
    finally:
        await channel.close()
    return NodeIdentity(ident.node_id, ident.role, ca.key_pem(key), resp.cert_pem, resp.ca_cert_pem)
