"""A join retried with the same key gets the same node: a lost answer (the manager made
the node, then the call was cancelled or timed out) no longer leaves a node record that
never comes up. On main every attempt made a new node (426-695 such ghosts in 5,000-node
runs). Against a real manager process on a real etcd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.lab.procs import ManagerProcess
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Cache, EtcdConnection, Kind, Store
from shoal.pki import ca
from shoal.pki.identity import JOIN_KEY, NodeIdentity, channel_options, join_key
from shoal.pki.join import JoinError, fetch_pinned_ca, join_addr_for
from shoal.proto import ca_pb2, ca_pb2_grpc
from shoal.worker.agent import join_with_retry

from .helpers import until

pytestmark = pytest.mark.integration


def token_of(m: ManagerProcess, role: str) -> str:
    got = m.ctl("cluster", "join-token", role, "-q")
    assert got.code == 0, got.err
    return got.out.strip()


def nodes_named(m: ManagerProcess, hostname: str) -> list[dict[str, object]]:
    got = m.ctl("node", "ls", "--format", "json")
    assert got.code == 0, got.err
    return [n for n in json.loads(got.out) if n["hostname"] == hostname]


def join_channel(m: ManagerProcess, token: str, target: str | None = None) -> grpc.aio.Channel:
    """A channel to the manager's join port (or to `target`, which forwards to it)."""
    join_addr = join_addr_for(m.addr)
    ca_pem = fetch_pinned_ca(join_addr, ca.parse_join_token(token).digest)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(target or join_addr, creds, options=channel_options())


def request(
    key: ec.EllipticCurvePrivateKey, token: str, hostname: str
) -> ca_pb2.IssueNodeCertificateRequest:
    # A fresh CSR each time (ECDSA signatures differ): only the key is the same.
    return ca_pb2.IssueNodeCertificateRequest(
        csr_pem=ca.new_csr(key), token=token, hostname=hostname
    )


async def issue(
    m: ManagerProcess, token: str, hostname: str, key: ec.EllipticCurvePrivateKey
) -> ca_pb2.IssueNodeCertificateResponse:
    async with join_channel(m, token) as ch:
        resp: ca_pb2.IssueNodeCertificateResponse = await ca_pb2_grpc.NodeCAStub(
            ch
        ).IssueNodeCertificate(request(key, token, hostname), timeout=30)
        return resp


async def refused(
    m: ManagerProcess, token: str, hostname: str, key: ec.EllipticCurvePrivateKey
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await issue(m, token, hostname, key)
    return err.value


async def renews(
    m: ManagerProcess, key: ec.EllipticCurvePrivateKey, resp: ca_pb2.IssueNodeCertificateResponse
) -> bool:
    """The certificate is for key and works: the manager's mTLS port takes it, and the
    node it names is in the cluster (a renewal needs both)."""
    cert = x509.load_pem_x509_certificate(resp.cert_pem)
    assert public_der(cert.public_key()) == public_der(key.public_key())
    ident = NodeIdentity(resp.node_id, resp.role, ca.key_pem(key), resp.cert_pem, resp.ca_cert_pem)
    async with ident.channel(m.addr) as ch:
        renewed = await ca_pb2_grpc.NodeCAStub(ch).RenewNodeCertificate(
            ca_pb2.RenewNodeCertificateRequest(csr_pem=ca.new_csr(ca.new_key())), timeout=30
        )
    got = ca.identity_of(renewed.cert_pem)
    return got is not None and got.node_id == resp.node_id


def public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_same_key_same_node_and_a_new_key_a_new_node(manager: ManagerProcess) -> None:
    token = token_of(manager, "worker")
    key = ca.new_key()
    first = await issue(manager, token, "same-key", key)
    second = await issue(manager, token, "same-key", key)
    assert first.node_id == second.node_id
    assert [n["id"] for n in nodes_named(manager, "same-key")] == [first.node_id]
    for resp in (first, second):
        assert await renews(manager, key, resp), "certificate refused"
    other = await issue(manager, token, "same-key", ca.new_key())
    assert other.node_id != first.node_id
    assert sorted(n["id"] for n in nodes_named(manager, "same-key")) == sorted(
        [first.node_id, other.node_id]
    )


async def test_concurrent_attempts_with_one_key_make_one_node(manager: ManagerProcess) -> None:
    token = token_of(manager, "worker")
    key = ca.new_key()
    answers = await asyncio.gather(*(issue(manager, token, "racer", key) for _ in range(4)))
    assert len({a.node_id for a in answers}) == 1
    assert len(nodes_named(manager, "racer")) == 1


async def test_removed_nodes_key_is_refused_and_writes_nothing(
    manager: ManagerProcess, store: Store, tmp_path: Path
) -> None:
    token = token_of(manager, "worker")
    key = join_key(tmp_path)
    node_id = (await issue(manager, token, "removed", key)).node_id
    got = manager.ctl("node", "rm", node_id)
    assert got.code == 0, got.err
    before = await store.revision()
    err = await refused(manager, token, "removed", key)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"node {node_id} was removed" in (err.details() or "")
    # The agent gives up at once, and says how to join as a new node instead.
    with pytest.raises(JoinError, match=f"remove {tmp_path}/certificates/{JOIN_KEY}"):
        await join_with_retry(manager.addr, token, "removed", tmp_path)
    assert await store.revision() == before, "a refused join wrote to etcd"
    assert nodes_named(manager, "removed") == []
    # The host itself may join again, as a new node (a new key).
    again = await issue(manager, token, "removed", ca.new_key())
    assert again.node_id != node_id


async def test_other_role_or_hostname_for_a_joined_key_is_refused(
    manager: ManagerProcess, store: Store
) -> None:
    key = ca.new_key()
    node_id = (await issue(manager, token_of(manager, "manager"), "mgr-key", key)).node_id
    worker_token = token_of(manager, "worker")
    before = await store.revision()
    err = await refused(manager, worker_token, "mgr-key", key)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"already joined as node {node_id} (manager" in (err.details() or "")
    err = await refused(manager, token_of(manager, "manager"), "other-name", key)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await store.revision() == before, "a refused join wrote to etcd"
    [node] = nodes_named(manager, "mgr-key")
    assert node["id"] == node_id and node["role"] == "manager"


class AnswerDropper:
    """A TCP forwarder to the join port that, once `drop` is set, drops whatever the
    manager sends: the call reaches the manager, its answer never reaches the client
    (what a client timeout or a cut connection does, without depending on timing)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.drop = False
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, down: bool) -> None:
            while data := await src.read(65536):
                if not (down and self.drop):
                    dst.write(data)
                    await dst.drain()

        try:
            await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def manager_cache(etcd: EmbeddedEtcd) -> AsyncIterator[Cache]:
    """A watch-fed view of the manager's own objects (its default key prefix)."""
    store = Store(EtcdConnection([etcd.endpoint], etcd.tls))
    cache = Cache(store)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.stop()
        await store.close()


async def test_cancelled_join_then_retry_leaves_one_node(
    manager: ManagerProcess, manager_cache: Cache, tmp_path: Path
) -> None:
    token = token_of(manager, "worker")
    state_dir = tmp_path / "agent"
    key = join_key(state_dir)
    assert (state_dir / "certificates" / JOIN_KEY).stat().st_mode & 0o777 == 0o600
    dropper = AnswerDropper(join_addr_for(manager.addr))
    try:
        async with join_channel(manager, token, await dropper.start()) as ch:
            stub = ca_pb2_grpc.NodeCAStub(ch)
            # One round trip first: the connection is up, settings exchanged.
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.RenewNodeCertificate(ca_pb2.RenewNodeCertificateRequest(), timeout=10)
            dropper.drop = True
            call = stub.IssueNodeCertificate(request(key, token, "lost-answer"), timeout=60)

            def made() -> bool:
                nodes = manager_cache.list_objects(Kind.NODE)
                return any(n.description.hostname == "lost-answer" for n in nodes)

            await until(manager_cache, made, 30)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
    finally:
        await dropper.close()
    [ghost] = nodes_named(manager, "lost-answer")
    # The agent's retry (or a restarted agent: the key is read back from its state dir).
    ident = await join_with_retry(manager.addr, token, "lost-answer", state_dir)
    assert ident.node_id == ghost["id"]
    assert [n["id"] for n in nodes_named(manager, "lost-answer")] == [ident.node_id]
    ident.save(state_dir)
    assert not (state_dir / "certificates" / JOIN_KEY).exists()
    assert (state_dir / "certificates" / "node.key").read_bytes() == ca.key_pem(key)
