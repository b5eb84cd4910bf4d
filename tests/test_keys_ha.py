"""The key-encryption key across managers: handed over on join, learnt after a
rotation, refused to workers; a plain CA key from before keys is sealed at start."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from aetcd import rpc as etcd_rpc

from shoal.lab.procs import ManagerProcess, WorkerProcess
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.store import Kind, Store
from shoal.manager.store.kinds import prefix_end
from shoal.pki import ca
from shoal.pki.identity import NodeIdentity
from shoal.proto import keys_pb2, keys_pb2_grpc
from shoal.proto import objects_pb2 as pb

from .test_agents_simulated import tokens
from .test_manager_process import shared_store  # noqa: F401  (the fixture)


async def all_values(store: Store) -> bytes:
    root = store.keys.root
    resp = await store.conn.kv.Range(etcd_rpc.RangeRequest(key=root, range_end=prefix_end(root)))
    return b"".join(kv.value for kv in resp.kvs)


def keyring(m: ManagerProcess) -> dict[str, object]:
    path = m.state_dir / "kek.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data: dict[str, object] = json.loads(path.read_text())
    return data


async def get_keys(ident: NodeIdentity, addr: str) -> grpc.StatusCode:
    channel = ident.channel(addr)
    try:
        await keys_pb2_grpc.KeyringStub(channel).GetKeys(keys_pb2.GetKeysRequest(), timeout=10)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()
    finally:
        await channel.close()


async def test_kek_join_rotation_and_refusal(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    shared_store: Store,  # noqa: F811
    managers: list[ManagerProcess],
    workers: list[WorkerProcess],
) -> None:
    etcd_args = etcd.manager_args()
    m1 = ManagerProcess(tmp_path / "m1", *etcd_args).start()
    managers.append(m1)
    m2 = ManagerProcess(
        tmp_path / "m2",
        *etcd_args,
        "--join-addr",
        m1.addr,
        "--join-token",
        tokens(m1).manager,
    ).start()
    managers.append(m2)
    # The joining manager received the keyring over its mTLS join.
    assert keyring(m2) == keyring(m1)
    assert b"PRIVATE KEY" not in await all_values(shared_store)
    first = keyring(m1)["current"]
    (tmp_path / "pw").write_text("rotate-me")
    assert m1.ctl("secret", "create", "pw", str(tmp_path / "pw")).code == 0

    r = m1.ctl("cluster", "rotate-kek", "--format", "json")
    assert r.code == 0, r.err
    rotated = json.loads(r.out)
    assert rotated["rewrapped"] == 2 and rotated["kek_id"] != first
    assert keyring(m1)["current"] == rotated["kek_id"]
    assert rotated["kek_id"] not in keyring(m2)["keys"]  # type: ignore[operator]
    cluster = (await shared_store.list_objects(Kind.CLUSTER))[0]
    assert isinstance(cluster, pb.Cluster) and cluster.kek_id == rotated["kek_id"]

    # A worker joining through m2 needs the CA key, sealed with the new KEK now:
    # m2 learns that key from m1 (manager to manager, mTLS) and issues the certificate.
    w = WorkerProcess(tmp_path / "w1", m2.addr, tokens(m1).worker, "--runtime", "simulated")
    workers.append(w.start())
    assert rotated["kek_id"] in keyring(m2)["keys"]  # type: ignore[operator]
    # What m2 seals from now on is sealed with the new key.
    assert m2.ctl("secret", "create", "pw2", str(tmp_path / "pw")).code == 0
    assert keyring(m2)["current"] == rotated["kek_id"]
    sealed = [d for d in await shared_store.list_objects(Kind.SECRET_DATA)]
    assert {d.data.kek_id for d in sealed} == {rotated["kek_id"]}  # type: ignore[union-attr]

    # The keyring is for managers only: a worker's certificate is refused.
    ident = NodeIdentity.load(w.state_dir)
    assert ident is not None and ident.role == pb.ROLE_WORKER
    assert await get_keys(ident, m1.addr) == grpc.StatusCode.PERMISSION_DENIED
    m2_ident = NodeIdentity.load(m2.state_dir)
    assert m2_ident is not None
    assert await get_keys(m2_ident, m1.addr) == grpc.StatusCode.OK


async def test_plain_ca_key_of_an_older_cluster_is_sealed(
    tmp_path: Path,
    etcd: EmbeddedEtcd,
    shared_store: Store,  # noqa: F811
    managers: list[ManagerProcess],
) -> None:
    root = ca.new_root_ca("old")
    await shared_store.create(pb.Cluster(id="old", root_ca=root))
    assert b"PRIVATE KEY" in await all_values(shared_store)
    m = ManagerProcess(tmp_path / "m1", *etcd.manager_args()).start()
    managers.append(m)
    cluster = (await shared_store.list_objects(Kind.CLUSTER))[0]
    assert isinstance(cluster, pb.Cluster)
    assert not cluster.root_ca.ca_key_pem and cluster.root_ca.ca_key_sealed.ciphertext
    assert cluster.root_ca.ca_digest == root.ca_digest  # the same CA: tokens still pin it
    values = await all_values(shared_store)
    assert b"PRIVATE KEY" not in values
    # The current value is sealed; etcd's history still holds the old revision until
    # compaction, which is why the key must never be written plain in the first place.
