"""Secrets and configs on a real etcd: envelope encryption, versions, rolling, refusal."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aetcd import rpc as etcd_rpc

from shoal.manager.controlapi import ControlAPI
from shoal.manager.keys import KeyMissing, Keyring, SealBroken, data_aad, open_root_ca
from shoal.manager.keyservice import KeyKeeper
from shoal.manager.manager import ensure_cluster
from shoal.manager.secrets import MAX_DATA_BYTES, data_id, task_files
from shoal.manager.store import Cache, Kind, Store
from shoal.manager.store.kinds import prefix_end
from shoal.proto import control_pb2 as api
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

from .helpers import service_spec as plain_spec

# A registry on a closed loopback port: image pinning fails at once, nothing leaves the host.
IMAGE = "127.0.0.1:1/busybox:1"


def service_spec(name: str) -> pb.ServiceSpec:
    return plain_spec(name, image=IMAGE)


PLAIN = b"hunter2-" + uuid.uuid4().hex.encode()


def test_seal_open_and_binding(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path)
    assert (tmp_path / "kek.json").stat().st_mode & 0o777 == 0o600
    sealed = ring.seal(PLAIN, data_aad("s1", 1))
    assert PLAIN not in sealed.SerializeToString()
    assert ring.open(sealed, data_aad("s1", 1)) == PLAIN
    # Bound to its object: the same blob under another id or version does not open.
    with pytest.raises(SealBroken):
        ring.open(sealed, data_aad("s2", 1))
    # A reloaded keyring opens it; a stranger's does not hold the key.
    assert Keyring.load(tmp_path).open(sealed, data_aad("s1", 1)) == PLAIN  # type: ignore[union-attr]
    with pytest.raises(KeyMissing):
        Keyring.create(tmp_path / "other").open(sealed, data_aad("s1", 1))


def test_rotation_rewraps_the_data_key_only(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path)
    sealed = ring.seal(PLAIN, b"aad")
    old = ring.current
    ring.rotate()
    moved = ring.rewrap(sealed)
    assert moved.kek_id == ring.current != old
    assert moved.ciphertext == sealed.ciphertext and moved.wrapped_key != sealed.wrapped_key
    assert ring.open(moved, b"aad") == PLAIN


@pytest.fixture
async def control(
    store: Store, cache: Cache, tmp_path: Path
) -> AsyncIterator[tuple[api_grpc.ControlStub, KeyKeeper]]:
    ring = Keyring.create(tmp_path / "m")
    await ensure_cluster(store, ring)
    keys = KeyKeeper(ring, store, cache, "m1", lambda: [])
    server = grpc.aio.server()
    api_grpc.add_ControlServicer_to_server(ControlAPI(store, cache, keys=keys), server)
    sock = tmp_path / "control.sock"
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sock}")
    try:
        yield api_grpc.ControlStub(channel), keys
    finally:
        await channel.close()
        await server.stop(0)


async def raw_values(store: Store) -> bytes:
    """Every value under the test's key prefix, as etcd holds them."""
    resp = await store.conn.kv.Range(
        etcd_rpc.RangeRequest(key=store.keys.root, range_end=prefix_end(store.keys.root))
    )
    return b"".join(kv.value for kv in resp.kvs)


def secret_ref(name: str, version: int = 0) -> pb.FileReference:
    return pb.FileReference(name=name, version=version, pinned=bool(version))


async def test_ca_key_is_sealed_in_etcd(
    store: Store, cache: Cache, control: tuple[api_grpc.ControlStub, KeyKeeper]
) -> None:
    _, keys = control
    cluster = (await store.list_objects(Kind.CLUSTER))[0]
    assert isinstance(cluster, pb.Cluster)
    assert not cluster.root_ca.ca_key_pem and cluster.kek_id == keys.ring.current
    key_pem = open_root_ca(cluster, keys.ring).ca_key_pem
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY")
    assert b"PRIVATE KEY" not in await raw_values(store)


async def test_secret_lifecycle(
    store: Store, cache: Cache, control: tuple[api_grpc.ControlStub, KeyKeeper]
) -> None:
    c, keys = control
    created = await c.CreateSecret(
        api.CreateSecretRequest(annotations=pb.Annotations(name="db_pw"), data=PLAIN)
    )
    sid = created.secret.id
    assert created.secret.secret_version == 1
    assert PLAIN not in await raw_values(store)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.CreateSecret(
            api.CreateSecretRequest(annotations=pb.Annotations(name="db_pw"), data=b"x")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.CreateSecret(
            api.CreateSecretRequest(
                annotations=pb.Annotations(name="big"), data=b"x" * (MAX_DATA_BYTES + 1)
            )
        )
    assert "500 KiB" in (err.value.details() or "")

    follows = service_spec("follows")
    follows.task.container.secrets.append(secret_ref("db_pw"))
    pinned = service_spec("pinned")
    pinned.task.container.secrets.append(secret_ref("db_pw", 1))
    pinned.task.container.secrets[0].target = "/etc/pw"
    s1 = (await c.CreateService(api.CreateServiceRequest(spec=follows))).service.service
    s2 = (await c.CreateService(api.CreateServiceRequest(spec=pinned))).service.service
    ref = s1.spec.task.container.secrets[0]
    assert (ref.id, ref.version, ref.target, ref.mode) == (sid, 1, "/run/secrets/db_pw", 0o444)

    new_plain = PLAIN + b"-v2"
    updated = await c.UpdateSecret(api.UpdateSecretRequest(ref="db_pw", data=new_plain))
    assert updated.secret.secret_version == 2 and list(updated.rolled) == ["follows"]
    await cache.sync()
    rolled = cache.get(Kind.SERVICE, s1.id)
    assert rolled.spec.task.container.secrets[0].version == 2
    assert rolled.spec_version == s1.spec_version + 1
    assert rolled.update_status.state == pb.UpdateStatus.UPDATING
    kept = cache.get(Kind.SERVICE, s2.id)
    assert kept.spec.task.container.secrets[0].version == 1 and kept.spec_version == 1
    # Version 1 is still pinned: its data stays; both decrypt.
    for version, plain in ((1, PLAIN), (2, new_plain)):
        sealed = cache.get(Kind.SECRET_DATA, data_id(sid, version))
        assert keys.ring.open(sealed.data, data_aad(sid, version)) == plain
    assert new_plain not in await raw_values(store)

    listed = await c.ListSecrets(api.ListSecretsRequest())
    assert [s.spec.annotations.name for s in listed.secrets] == ["db_pw"]
    got = await c.GetSecret(api.SecretRefRequest(ref="db_pw"))
    assert sorted(got.services) == ["follows", "pinned"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.RemoveSecret(api.SecretRefRequest(ref="db_pw"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "follows" in (err.value.details() or "") and "pinned" in (err.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        bad = service_spec("bad")
        bad.task.container.secrets.append(secret_ref("db_pw", 7))
        await c.CreateService(api.CreateServiceRequest(spec=bad))
    assert "no version 7" in (err.value.details() or "")

    for name in ("follows", "pinned"):
        await c.RemoveService(api.RemoveServiceRequest(ref=name))
    await c.RemoveSecret(api.SecretRefRequest(ref="db_pw"))
    await cache.sync()
    assert not cache.list_objects(Kind.SECRET) and not cache.list_objects(Kind.SECRET_DATA)


async def test_configs_are_their_own_objects(
    store: Store, cache: Cache, control: tuple[api_grpc.ControlStub, KeyKeeper]
) -> None:
    c, _ = control
    await c.CreateConfig(
        api.CreateSecretRequest(annotations=pb.Annotations(name="site"), data=b"server {}")
    )
    spec = service_spec("web")
    spec.task.container.configs.append(pb.FileReference(name="site", target="/etc/site.conf"))
    web = (await c.CreateService(api.CreateServiceRequest(spec=spec))).service.service
    assert web.spec.task.container.configs[0].version == 1
    assert not (await c.ListSecrets(api.ListSecretsRequest())).secrets
    with pytest.raises(grpc.aio.AioRpcError):
        await c.GetSecret(api.SecretRefRequest(ref="site"))


async def test_key_rotation_rewraps_everything(
    store: Store, cache: Cache, control: tuple[api_grpc.ControlStub, KeyKeeper]
) -> None:
    c, keys = control
    await c.CreateSecret(api.CreateSecretRequest(annotations=pb.Annotations(name="a"), data=PLAIN))
    await c.CreateConfig(api.CreateSecretRequest(annotations=pb.Annotations(name="b"), data=b"b"))
    old = keys.ring.current
    resp = await c.RotateKey(api.RotateKeyRequest())
    assert resp.kek_id == keys.ring.current != old and resp.rewrapped == 3
    await cache.sync()
    cluster = cache.list_objects(Kind.CLUSTER)[0]
    assert cluster.kek_id == resp.kek_id and cluster.root_ca.ca_key_sealed.kek_id == resp.kek_id
    for sealed in cache.list_objects(Kind.SECRET_DATA):
        assert sealed.data.kek_id == resp.kek_id
    # A keyring holding only the new key opens everything.
    only_new = Keyring(
        Path("/nonexistent"), resp.kek_id, {resp.kek_id: keys.ring.keys[resp.kek_id]}
    )
    assert open_root_ca(cluster, only_new).ca_key_pem
    sid = cache.id_by_name(Kind.SECRET, "a")
    sealed = cache.get(Kind.SECRET_DATA, data_id(sid, 1))
    assert only_new.open(sealed.data, data_aad(sid, 1)) == PLAIN


async def test_task_files_only_for_the_node_running_the_task(
    store: Store, cache: Cache, control: tuple[api_grpc.ControlStub, KeyKeeper]
) -> None:
    c, keys = control
    await c.CreateSecret(api.CreateSecretRequest(annotations=pb.Annotations(name="k"), data=PLAIN))
    spec = service_spec("svc")
    spec.task.container.secrets.append(pb.FileReference(name="k", uid=5, gid=6, mode=0o400))
    service = (await c.CreateService(api.CreateServiceRequest(spec=spec))).service.service
    task = pb.Task(id="t1", service_id=service.id, node_id="n1", spec=service.spec.task, slot=1)
    task.desired_state = pb.RUNNING
    await store.create(task)
    files = await task_files(cache, keys, "n1", "t1")
    f = files.files[0]
    assert (f.data, f.target, f.uid, f.gid, f.mode) == (PLAIN, "/run/secrets/k", 5, 6, 0o400)
    with pytest.raises(PermissionError):
        await task_files(cache, keys, "n2", "t1")
    with pytest.raises(PermissionError):
        await task_files(cache, keys, "n1", "no-such-task")
    task.desired_state = pb.SHUTDOWN
    await store.update(task)
    with pytest.raises(PermissionError):
        await task_files(cache, keys, "n1", "t1")
