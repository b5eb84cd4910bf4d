"""The cluster's root CA and join tokens.

A join token is `SWMTKN-1-<sha256 of the CA certificate>-<secret>`: the digest
lets a joining node pin the CA it is about to trust (no MITM), the secret says
which role it may join as.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.clock import utcnow
from shoal.proto import objects_pb2 as pb

TOKEN_PREFIX = "SWMTKN-1"
ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
_SECRET_ALPHABET = string.digits + string.ascii_lowercase


def new_root_ca(cluster_id: str) -> pb.RootCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "shoal-root-ca"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        ]
    )
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pb.RootCA(ca_cert_pem=cert_pem, ca_key_pem=key_pem, ca_digest=ca_digest(cert_pem))


def ca_digest(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def new_join_token(digest: str) -> str:
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(25))
    return f"{TOKEN_PREFIX}-{digest}-{secret}"


@dataclass(frozen=True)
class ParsedToken:
    digest: str
    secret: str


def parse_join_token(token: str) -> ParsedToken:
    parts = token.split("-")
    if len(parts) != 4 or f"{parts[0]}-{parts[1]}" != TOKEN_PREFIX or not parts[2] or not parts[3]:
        raise ValueError("invalid join token: expected SWMTKN-1-<ca digest>-<secret>")
    return ParsedToken(digest=parts[2], secret=parts[3])


def token_role(cluster: pb.Cluster, token: str) -> pb.NodeRole.ValueType | None:
    """The role a token grants in this cluster, or None if it is not a current token."""
    for role, current in (
        (pb.ROLE_WORKER, cluster.join_tokens.worker),
        (pb.ROLE_MANAGER, cluster.join_tokens.manager),
    ):
        if current and hmac.compare_digest(current.encode(), token.encode()):
            return role
    return None


# Managers' certificates carry this DNS name; agents verify it (like SwarmKit's
# "swarm-manager"), so manager addresses need not be in any certificate.
MANAGER_SERVER_NAME = "shoal-manager"
ROLE_OU = {pb.ROLE_WORKER: "swarm-worker", pb.ROLE_MANAGER: "swarm-manager"}
OU_ROLE = {ou: role for role, ou in ROLE_OU.items()}


class CSRError(ValueError):
    pass


def _load_ca(root: pb.RootCA) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(root.ca_cert_pem)
    key = serialization.load_pem_private_key(root.ca_key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key is not an ECDSA key")
    return cert, key


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    # The manager decides CN and OU; the CSR only proves possession of the key.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-node")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _checked_csr_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, once its self-signature proves the sender holds the key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise CSRError(f"invalid certificate signing request: {err}") from None
    if not csr.is_signature_valid:
        raise CSRError("the certificate signing request's signature is invalid")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CSRError("only ECDSA keys are accepted")
    return public_key


def csr_key_der(csr_pem: bytes) -> bytes:
    """The CSR's SubjectPublicKeyInfo (DER), checked as issue_cert checks it."""
    return _checked_csr_key(csr_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def issue_cert(
    root: pb.RootCA,
    csr_pem: bytes,
    node_id: str,
    role: pb.NodeRole.ValueType,
    cluster_id: str,
    validity: datetime.timedelta,
) -> bytes:
    """Signs a node certificate: CN = node id, OU = role, O = cluster id."""
    public_key = _checked_csr_key(csr_pem)
    ca_cert, ca_key = _load_ca(root)
    now = utcnow()
    names: list[x509.GeneralName] = [x509.DNSName(node_id)]
    if role == pb.ROLE_MANAGER:
        names.append(x509.DNSName(MANAGER_SERVER_NAME))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OU[role]),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Identity:
    node_id: str
    role: pb.NodeRole.ValueType
    cluster_id: str


def identity_of(cert_pem: bytes) -> Identity | None:
    """Who a (already verified) peer certificate says it is."""
    cert = x509.load_pem_x509_certificate(cert_pem)

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    role = OU_ROLE.get(attr(NameOID.ORGANIZATIONAL_UNIT_NAME))
    node_id = attr(NameOID.COMMON_NAME)
    if role is None or not node_id:
        return None
    return Identity(node_id, role, attr(NameOID.ORGANIZATION_NAME))


def cert_lifetime(cert_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def manager_server_cert(
    cluster: pb.Cluster, manager_id: str
) -> tuple[bytes, bytes, datetime.timedelta]:
    """A new key and certificate for one of a manager's TLS servers: (the chain, with
    the root so a joining node can pin it by its digest; the key PEM; the validity)."""
    key = new_key()
    validity = datetime.timedelta(milliseconds=cluster.spec.ca.node_cert_expiry_ms)
    cert = issue_cert(
        cluster.root_ca, new_csr(key), manager_id, pb.ROLE_MANAGER, cluster.id, validity
    )
    return cert + cluster.root_ca.ca_cert_pem, key_pem(key), validity
