"""Joining a cluster and renewing a node certificate.

Joining pins the CA by the digest in the join token: the manager's TLS chain
carries the root, and only a root whose SHA-256 matches is trusted. The
certificate is then requested over TLS verified against that root.
"""

from __future__ import annotations

import _ssl
import asyncio
import hashlib
import socket
import ssl

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.pki import ca
from shoal.pki.identity import NodeIdentity, channel_options
from shoal.proto import ca_pb2, ca_pb2_grpc

CALL_TIMEOUT_S = 15.0


class JoinError(Exception):
    """A join that did not succeed; `transient` when trying again later may work (the
    manager was busy or unreachable), not when the token or the CSR was refused;
    `key_refused` when the key was (its node was removed, or joined otherwise)."""

    def __init__(self, message: str, transient: bool = False, key_refused: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.key_refused = key_refused


# Joins queue on the manager (bounded concurrency), so a join may wait its turn.
JOIN_TIMEOUT_S = 60.0
_TRANSIENT = (
    # The manager ended the call (it stopped, or dropped it under load): try again.
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)


def split_addr(addr: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) -> (host without brackets, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise JoinError(f"bad manager address {addr!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def join_addr_for(addr: str) -> str:
    """The CA join endpoint that goes with a manager address: the next port.

    Joining nodes have no certificate yet, and gRPC Python servers can either
    require client certificates or not ask for them at all; so certificate-less
    joins get their own TLS port, and the main port is strictly mTLS. The host
    is kept as given (an IPv6 host keeps its brackets); port 0 (any free port)
    stays 0.
    """
    split_addr(addr)  # refuses a malformed address with a clear message
    host, _, port = addr.rpartition(":")
    return f"{host}:{int(port) + 1 if int(port) else 0}"


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


async def join(
    addr: str, token: str, hostname: str, key: ec.EllipticCurvePrivateKey | None = None
) -> NodeIdentity:
    """Joins the cluster: pins the CA, sends a CSR with the token, gets a certificate.

    The manager names the node by its key: a join retried with the same `key`
    (identity.join_key) gets the node its earlier attempts made, not a new one.
    """
    try:
        parsed = ca.parse_join_token(token)
    except ValueError as err:
        raise JoinError(str(err)) from None
    join_addr = join_addr_for(addr)
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, join_addr, parsed.digest)
    key = key or ca.new_key()
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
            f"join refused by {join_addr}: {err.details()}",
            err.code() in _TRANSIENT,
            err.code() == grpc.StatusCode.FAILED_PRECONDITION,
        ) from None
    finally:
        await channel.close()
    return NodeIdentity(resp.node_id, resp.role, ca.key_pem(key), resp.cert_pem, resp.ca_cert_pem)


async def renew(ident: NodeIdentity, addr: str) -> NodeIdentity:
    """A new key and certificate for the same node, asked for over its current mTLS."""
    key = ca.new_key()
    channel = ident.channel(addr)
    try:
        resp = await ca_pb2_grpc.NodeCAStub(channel).RenewNodeCertificate(
            ca_pb2.RenewNodeCertificateRequest(csr_pem=ca.new_csr(key)), timeout=CALL_TIMEOUT_S
        )
    finally:
        await channel.close()
    return NodeIdentity(ident.node_id, ident.role, ca.key_pem(key), resp.cert_pem, resp.ca_cert_pem)
