"""shoal.pki without a cluster: tokens, certificates, identities on disk, join addresses,
and the node ids the NodeCA derives from keys."""

from __future__ import annotations

import datetime
import string
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.manager.ids import ID_LENGTH
from shoal.manager.nodeca import node_id_for
from shoal.pki import ca
from shoal.pki.identity import JOIN_KEY, NodeIdentity, join_key
from shoal.pki.join import JoinError, join_addr_for, split_addr
from shoal.proto import objects_pb2 as pb


def test_join_addr_is_the_next_port_and_keeps_the_host() -> None:
    assert join_addr_for("10.0.0.1:4242") == "10.0.0.1:4243"
    # An IPv6 host keeps its brackets, or gRPC could not tell host from port.
    assert join_addr_for("[::1]:4242") == "[::1]:4243"
    # Port 0 (any free port) for the mTLS port means any free port for joins too.
    assert join_addr_for("127.0.0.1:0") == "127.0.0.1:0"
    assert split_addr("[::1]:4243") == ("::1", 4243)
    for bad in ("manager", "manager:", "manager:http"):
        with pytest.raises(JoinError, match="expected HOST:PORT"):
            join_addr_for(bad)


def test_join_token_names_the_ca_and_grants_a_role() -> None:
    root = ca.new_root_ca("c1")
    assert root.ca_digest == ca.ca_digest(root.ca_cert_pem)
    worker, manager = ca.new_join_token(root.ca_digest), ca.new_join_token(root.ca_digest)
    assert worker != manager
    parsed = ca.parse_join_token(worker)
    assert parsed.digest == root.ca_digest
    cluster = pb.Cluster(root_ca=root, join_tokens=pb.JoinTokens(worker=worker, manager=manager))
    assert ca.token_role(cluster, worker) == pb.ROLE_WORKER
    assert ca.token_role(cluster, manager) == pb.ROLE_MANAGER
    assert ca.token_role(cluster, ca.new_join_token(root.ca_digest)) is None
    for bad in ("", "SWMTKN-1-abc", "SWMTKN-2-abc-def", "SWMTKN-1--def"):
        with pytest.raises(ValueError, match="invalid join token"):
            ca.parse_join_token(bad)


def test_issued_certificate_says_who_and_round_trips_on_disk(tmp_path: Path) -> None:
    root = ca.new_root_ca("c1")
    key = ca.new_key()
    validity = datetime.timedelta(hours=1)
    cert = ca.issue_cert(root, ca.new_csr(key), "n1", pb.ROLE_WORKER, "c1", validity)
    assert ca.identity_of(cert) == ca.Identity("n1", pb.ROLE_WORKER, "c1")
    start, end = ca.cert_lifetime(cert)
    assert end - start == validity + datetime.timedelta(minutes=5)
    with pytest.raises(ca.CSRError):
        ca.issue_cert(root, b"not a csr", "n1", pb.ROLE_WORKER, "c1", validity)

    ident = NodeIdentity("n1", pb.ROLE_WORKER, ca.key_pem(key), cert, root.ca_cert_pem)
    ident.save(tmp_path)
    assert NodeIdentity.load(tmp_path) == ident
    assert (tmp_path / "node_id").read_text() == "n1"
    assert (tmp_path / "certificates" / "node.key").stat().st_mode & 0o777 == 0o600
    assert start + (end - start) / 2 <= ident.renew_at() <= start + (end - start) * 0.8
    assert NodeIdentity.load(tmp_path / "elsewhere") is None


def test_join_key_is_kept_until_joined(tmp_path: Path) -> None:
    key = join_key(tmp_path)
    path = tmp_path / "certificates" / JOIN_KEY
    assert path.stat().st_mode & 0o777 == 0o600
    # Every attempt, and an agent restarted mid-join, joins with the same key.
    assert ca.key_pem(join_key(tmp_path)) == ca.key_pem(key)
    root = ca.new_root_ca("c1")
    cert = ca.issue_cert(
        root, ca.new_csr(key), "n1", pb.ROLE_WORKER, "c1", datetime.timedelta(hours=1)
    )
    NodeIdentity("n1", pb.ROLE_WORKER, ca.key_pem(key), cert, root.ca_cert_pem).save(tmp_path)
    assert not path.exists()
    assert ca.key_pem(join_key(tmp_path)) != ca.key_pem(key)


def test_node_id_is_a_function_of_the_key_a_csr_proves() -> None:
    key, other = ca.new_key(), ca.new_key()
    spki = ca.csr_key_der(ca.new_csr(key))
    node_id = node_id_for("c1", spki)
    assert node_id == node_id_for("c1", ca.csr_key_der(ca.new_csr(key)))
    assert len(node_id) == ID_LENGTH and set(node_id) <= set(string.digits + string.ascii_lowercase)
    assert node_id != node_id_for("c2", spki)
    assert node_id != node_id_for("c1", ca.csr_key_der(ca.new_csr(other)))
    # A CSR naming someone else's key (its signature then does not verify) gets no id.
    der = x509.load_pem_x509_csr(ca.new_csr(other)).public_bytes(serialization.Encoding.DER)
    other_spki = ca.csr_key_der(ca.new_csr(other))
    forged = der.replace(other_spki, spki)
    assert forged != der
    pem = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ca.CSRError, match="signature is invalid"):
        ca.csr_key_der(pem)
