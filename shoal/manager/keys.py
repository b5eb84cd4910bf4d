"""The managers' key-encryption key (KEK) and envelope encryption.

Whatever is secret in etcd (the CA private key, secret and config data) is
sealed: the data with a random 256-bit data key (AES-GCM), that data key
wrapped by the KEK (AES-GCM). The KEK lives only in a 0600 file in each
manager's state dir, never in etcd; joining managers get it over their mTLS
join (the Keyring service, manager certificates only). Rotating the KEK
re-wraps the data keys; the data itself is not re-encrypted.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.proto import keys_pb2
from shoal.proto import objects_pb2 as pb

KEYRING_FILE = "kek.json"
KEY_BYTES = 32
NONCE_BYTES = 12


class KeyMissing(LookupError):
    """Data is sealed with a key-encryption key this manager does not hold."""

    def __init__(self, kek_id: str) -> None:
        super().__init__(f"key-encryption key {kek_id} is not in this manager's keyring")
        self.kek_id = kek_id


class SealBroken(ValueError):
    """The sealed data does not decrypt (tampered, or bound to another object)."""


def new_kek_id() -> str:
    return secrets.token_hex(8)


@dataclass
class Keyring:
    """KEKs by id; `current` seals, older ones still open what they sealed."""

    path: Path
    current: str = ""
    keys: dict[str, bytes] = field(default_factory=dict)

    @staticmethod
    def load(state_dir: Path) -> Keyring | None:
        path = state_dir / KEYRING_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        keys = {k: bytes.fromhex(v) for k, v in raw["keys"].items()}
        if raw["current"] not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise ValueError(f"{path}: malformed keyring")
        return Keyring(path, raw["current"], keys)

    @staticmethod
    def create(state_dir: Path) -> Keyring:
        ring = Keyring(state_dir / KEYRING_FILE)
        ring.add(new_kek_id(), secrets.token_bytes(KEY_BYTES), make_current=True)
        ring.save()
        return ring

    def add(self, kek_id: str, key: bytes, make_current: bool = False) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a key-encryption key is 32 bytes")
        self.keys[kek_id] = key
        if make_current or not self.current:
            self.current = kek_id

    def rotate(self) -> str:
        """A new current KEK (older ones stay to open data not yet re-wrapped)."""
        kek_id = new_kek_id()
        self.add(kek_id, secrets.token_bytes(KEY_BYTES), make_current=True)
        self.save()
        return kek_id

    def save(self) -> None:
        """Atomically, 0600 from the first byte."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"current": self.current, "keys": {k: v.hex() for k, v in self.keys.items()}}, f
            )
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def entries(self) -> list[keys_pb2.KeyEntry]:
        """For a joining manager: the current key first."""
        order = [self.current, *sorted(k for k in self.keys if k != self.current)]
        return [keys_pb2.KeyEntry(kek_id=k, key=self.keys[k]) for k in order]

    def merge(self, entries: list[keys_pb2.KeyEntry], current: str = "") -> bool:
        """Takes keys learnt from another manager; True if any was new."""
        new = False
        for e in entries:
            if e.kek_id not in self.keys:
                self.add(e.kek_id, e.key)
                new = True
        if current and current in self.keys and current != self.current:
            self.current = current
            new = True
        if new:
            self.save()
        return new

    # ------------------------------------------------------------ envelopes

    def _kek(self, kek_id: str) -> AESGCM:
        key = self.keys.get(kek_id)
        if key is None:
            raise KeyMissing(kek_id)
        return AESGCM(key)

    def seal(self, data: bytes, aad: bytes) -> pb.Sealed:
        """Encrypts data with a fresh data key; aad binds it to one object."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, data, aad)
        sealed = pb.Sealed(nonce=nonce, ciphertext=ciphertext)
        self._wrap(sealed, data_key)
        return sealed

    def _wrap(self, sealed: pb.Sealed, data_key: bytes) -> None:
        key_nonce = os.urandom(NONCE_BYTES)
        sealed.kek_id = self.current
        sealed.key_nonce = key_nonce
        sealed.wrapped_key = self._kek(self.current).encrypt(
            key_nonce, data_key, self.current.encode()
        )

    def _unwrap(self, sealed: pb.Sealed) -> bytes:
        try:
            return self._kek(sealed.kek_id).decrypt(
                sealed.key_nonce, sealed.wrapped_key, sealed.kek_id.encode()
            )
        except InvalidTag:
            raise SealBroken(f"the data key wrapped by {sealed.kek_id} does not open") from None

    def open(self, sealed: pb.Sealed, aad: bytes) -> bytes:
        data_key = self._unwrap(sealed)
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise SealBroken("sealed data does not decrypt (tampered or misplaced)") from None

    def rewrap(self, sealed: pb.Sealed) -> pb.Sealed:
        """The same ciphertext with its data key wrapped by the current KEK."""
        out = pb.Sealed()
        out.CopyFrom(sealed)
        self._wrap(out, self._unwrap(sealed))
        return out


def ca_key_aad(cluster_id: str) -> bytes:
    return f"shoal/ca-key/{cluster_id}".encode()


def data_aad(owner_id: str, version: int) -> bytes:
    return f"shoal/data/{owner_id}/{version}".encode()


def seal_root_ca(cluster: pb.Cluster, ring: Keyring) -> bool:
    """Moves a plain CA key (created before keys existed) into a sealed one; True if changed."""
    root = cluster.root_ca
    if not root.ca_key_pem:
        return False
    root.ca_key_sealed.CopyFrom(ring.seal(root.ca_key_pem, ca_key_aad(cluster.id)))
    root.ClearField("ca_key_pem")
    cluster.kek_id = ring.current
    return True


def open_root_ca(cluster: pb.Cluster, ring: Keyring) -> pb.RootCA:
    """The root CA with its private key, for use in memory only."""
    out = pb.RootCA()
    out.CopyFrom(cluster.root_ca)
    if not out.ca_key_pem:
        out.ca_key_pem = ring.open(out.ca_key_sealed, ca_key_aad(cluster.id))
    return out
