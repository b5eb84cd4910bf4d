"""A node's identity: its key, certificate, the cluster CA and its node id.

Kept in `<state dir>/certificates`; the node id also goes to `<state dir>/node_id`.
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.pki import ca
from shoal.proto import objects_pb2 as pb


def channel_options() -> list[tuple[str, object]]:
    """Options for every channel a node opens to a manager."""
    return [
        ("grpc.ssl_target_name_override", ca.MANAGER_SERVER_NAME),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


# The key of a join in progress: every attempt (and an agent restarted mid-join) sends
# a CSR of this one key, so the manager, which names nodes by their key, sees one node.
JOIN_KEY = "join.key"


def _certificates_dir(state_dir: Path) -> Path:
    d = state_dir / "certificates"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Written whole or not at all (a process crash leaves the old file or none)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def join_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The key this node joins with: the pending one in the state dir, else a new one
    kept there (0600) before any attempt uses it. NodeIdentity.save removes it."""
    path = _certificates_dir(state_dir) / JOIN_KEY
    try:
        old = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(old, ec.EllipticCurvePrivateKey):
            return old
    except (FileNotFoundError, ValueError):
        pass  # none yet, or unreadable (written atomically, so not ours): a new one
    key = ca.new_key()
    _write_file(path, ca.key_pem(key), 0o600)
    return key


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
        d = _certificates_dir(state_dir)
        for name, data, mode in (
            ("node.key", self.key_pem, 0o600),
            ("node.crt", self.cert_pem, 0o644),
            ("ca.crt", self.ca_pem, 0o644),
        ):
            _write_file(d / name, data, mode)
        (state_dir / "node_id").write_text(self.node_id)
        # Joined: the join's key is node.key now.
        (d / JOIN_KEY).unlink(missing_ok=True)

    def renew_at(self) -> datetime.datetime:
        """A random point at 50-80% of the certificate's life, like SwarmKit."""
        start, end = ca.cert_lifetime(self.cert_pem)
        return start + (end - start) * random.uniform(0.5, 0.8)
