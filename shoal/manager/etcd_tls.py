"""Credentials of the embedded etcd: a CA of its own, a server and a client certificate.

etcd holds the cluster's trust root, so the embedded one speaks TLS only and
accepts only clients with a certificate from this CA (not the cluster CA: a node
certificate must never open etcd). The files live under the etcd directory of
the manager's state dir, 0600 in a 0700 directory, and are made once.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=10 * 365)


@dataclass(frozen=True)
class EtcdCredentials:
    """Paths of the PEM files etcd and its clients use."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def under(cls, directory: Path) -> EtcdCredentials:
        return cls(
            ca=directory / "ca.crt",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            client_cert=directory / "client.crt",
            client_key=directory / "client.key",
        )

    def complete(self) -> bool:
        return all(
            p.exists()
            for p in (self.ca, self.server_cert, self.server_key, self.client_cert, self.client_key)
        )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    usages: list[x509.ObjectIdentifier],
    addresses: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    ips = [ipaddress.ip_address(a) for a in ("127.0.0.1", *addresses)]
    cert = (
        _builder(cn, "shoal-etcd-ca", key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), *(x509.IPAddress(ip) for ip in ips)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure_credentials(directory: Path, addresses: tuple[str, ...] = ()) -> EtcdCredentials:
    """The embedded etcd's CA, server and client certificates; made on first use.
    addresses: further IPs the server certificate names (etcd members on other hosts)."""
    creds = EtcdCredentials.under(directory)
    if creds.complete():
        return creds
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _builder("shoal-etcd-ca", "shoal-etcd-ca", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # etcd's peer side dials its own peer port with the server certificate: both usages.
    server_cert, server_key = _leaf(
        ca_key,
        "shoal-etcd",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        addresses,
    )
    client_cert, client_key = _leaf(ca_key, "shoal-manager", [ExtendedKeyUsageOID.CLIENT_AUTH])
    # The CA key is not kept: nothing else is ever signed with it.
    _write_private(creds.server_cert, server_cert)
    _write_private(creds.server_key, server_key)
    _write_private(creds.client_cert, client_cert)
    _write_private(creds.client_key, client_key)
    _write_private(creds.ca, ca.public_bytes(serialization.Encoding.PEM))
    return creds
