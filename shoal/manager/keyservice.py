"""How managers get, share and rotate the key-encryption key (see keys.py).

- The first manager of a cluster creates the keyring with the cluster.
- A joining manager fetches it from the manager it joins through, over mTLS
  with its new manager certificate (the Keyring service refuses workers).
- A manager that meets a KEK it does not hold (another manager rotated) asks
  the live managers for it.
- Rotation: a new current KEK, then every sealed data key re-wrapped by it,
  the CA key's in the same transaction that names the new KEK in the cluster.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from shoal.manager.keys import KeyMissing, Keyring, open_root_ca, seal_root_ca
from shoal.manager.store import Cache, Conflict, Kind, Store, Update
from shoal.pki import ca
from shoal.pki.identity import NodeIdentity
from shoal.proto import keys_pb2, keys_pb2_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0


class KeyringUnavailable(RuntimeError):
    pass


class KeyringService(keys_pb2_grpc.KeyringServicer):
    """Hands the keyring to other managers (the authorizer admits manager certificates only)."""

    def __init__(self, ring: Callable[[], Keyring | None]) -> None:
        self.ring = ring

    async def GetKeys(
        self, request: keys_pb2.GetKeysRequest, context: Any
    ) -> keys_pb2.GetKeysResponse:
        ring = self.ring()
        if ring is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this manager has no keyring yet")
        assert ring is not None
        return keys_pb2.GetKeysResponse(keys=ring.entries())


async def fetch_keys(addr: str, ident: NodeIdentity) -> list[keys_pb2.KeyEntry]:
    channel = ident.channel(addr)
    try:
        resp = await keys_pb2_grpc.KeyringStub(channel).GetKeys(
            keys_pb2.GetKeysRequest(), timeout=CALL_TIMEOUT_S
        )
        return list(resp.keys)
    finally:
        await channel.close()


def client_identity(root: pb.RootCA, cluster_id: str, manager_id: str) -> NodeIdentity:
    """A short-lived manager certificate minted in memory, to call other managers."""
    key = ca.new_key()
    cert = ca.issue_cert(
        root, ca.new_csr(key), manager_id, pb.ROLE_MANAGER, cluster_id, datetime.timedelta(hours=1)
    )
    return NodeIdentity(manager_id, pb.ROLE_MANAGER, ca.key_pem(key), cert, root.ca_cert_pem)




async def prepare_keyring(
    state_dir: Path, store: Store, join_addr: str, ident: NodeIdentity | None
) -> Keyring:
    """This manager's keyring: from its state dir, from the manager it joins, or new."""
    ring = Keyring.load(state_dir)
    if ring is not None:
        return ring
    if join_addr and ident is not None:
        entries = await fetch_keys(join_addr, ident)
        if not entries:
            raise KeyringUnavailable(f"the manager at {join_addr} sent no keys")
        ring = Keyring(state_dir / "kek.json")
        ring.merge(entries, current=entries[0].kek_id)
        log.info("key-encryption key received from %s", join_addr)
        return ring
    cluster = await store.cluster()
    if cluster is not None and cluster.kek_id:
        raise KeyringUnavailable(
            "the cluster's secrets are sealed with a key-encryption key this manager does not "
            f"have ({state_dir / 'kek.json'} is missing): join through a manager "
            "(--join-addr, --join-token) to receive it"
        )
    log.info("created the cluster's key-encryption key")
    return Keyring.create(state_dir)


async def seal_existing_ca(store: Store, ring: Keyring) -> pb.Cluster:
    """A cluster made before keys existed keeps its CA key in plain text: seal it."""
    for _ in range(5):
        cluster = await store.cluster()
        assert cluster is not None
        if not seal_root_ca(cluster, ring):
            return cluster
        try:
            await store.update(cluster)
            log.info("sealed the cluster CA key with key-encryption key %s", ring.current)
            return cluster
        except Conflict:
            continue
    raise Conflict("could not seal the CA key: the cluster keeps changing")


class KeyKeeper:
    """A manager's keyring at run time: opens sealed data, follows and performs rotations."""

    def __init__(
        self,
        ring: Keyring,
        store: Store,
        cache: Cache,
        manager_id: str,
        peers: Callable[[], list[str]],
        root: pb.RootCA | None = None,
    ) -> None:
        self.ring = ring
        self.store = store
        self.cache = cache
        self.manager_id = manager_id
        self.peers = peers
        # The CA with its key, opened: to mint a certificate for calling other managers.
        self._root = root

    def cluster(self) -> pb.Cluster:
        clusters = self.cache.list_objects(Kind.CLUSTER)
        if not clusters:
            raise KeyringUnavailable("the cluster is not initialised yet")
        return clusters[0]  # type: ignore[no-any-return]

    async def root_ca(self, cluster: pb.Cluster) -> pb.RootCA:
        """The CA with its private key (in memory), fetching a rotated KEK if needed."""
        try:
            self._root = open_root_ca(cluster, self.ring)
        except KeyMissing as err:
            await self.learn(err.kek_id, cluster)
            self._root = open_root_ca(cluster, self.ring)
        return self._root

    async def open(self, sealed: pb.Sealed, aad: bytes) -> bytes:
        try:
            return self.ring.open(sealed, aad)
        except KeyMissing as err:
            await self.learn(err.kek_id, self.cluster())
            return self.ring.open(sealed, aad)

    async def follow(self) -> KeyKeeper:
        """Before sealing: use the cluster's current KEK, learning it if another manager
        rotated (so nothing new is sealed with a retired key)."""
        cluster = self.cluster()
        if cluster.kek_id and cluster.kek_id != self.ring.current:
            if cluster.kek_id not in self.ring.keys:
                await self.learn(cluster.kek_id, cluster)
            self.ring.merge([], current=cluster.kek_id)
        return self

    async def learn(self, kek_id: str, cluster: pb.Cluster) -> None:
        """Asks the other live managers for a KEK this one lacks."""
        if self._root is None:
            raise KeyMissing(kek_id)
        ident = client_identity(self._root, cluster.id, self.manager_id)
        for addr in self.peers():
            try:
                entries = await fetch_keys(addr, ident)
            except grpc.aio.AioRpcError as err:
                log.warning("fetching keys from %s failed: %s", addr, err.details())
                continue
            self.ring.merge(entries, current=cluster.kek_id)
            if kek_id in self.ring.keys:
                log.info("learnt key-encryption key %s from %s", kek_id, addr)
                return
        raise KeyMissing(kek_id)

    async def rotate(self) -> tuple[str, int]:
        """A new current KEK; every data key re-wrapped. Returns (kek id, data keys re-wrapped)."""
        await self.cache.sync()
        kek_id = self.ring.rotate()
        cluster = pb.Cluster()
        cluster.CopyFrom(self.cluster())
        for _ in range(5):
            cluster.root_ca.ca_key_sealed.CopyFrom(self.ring.rewrap(cluster.root_ca.ca_key_sealed))
            cluster.kek_id = kek_id
            try:
                await self.store.update(cluster)
                break
            except Conflict:
                await self.cache.sync()
                cluster.CopyFrom(self.cluster())
        else:
            raise Conflict("the cluster kept changing during the key rotation; run it again")
        count = 1 + await self.rewrap_data()
        log.info("key-encryption key rotated to %s (%d data keys re-wrapped)", kek_id, count)
        return kek_id, count

    async def rewrap_data(self) -> int:
        """Re-wraps every secret/config version sealed by an older KEK; returns how many."""
        done = 0
        for _ in range(5):
            await self.cache.sync()
            ops: list[Update] = []
            for obj in self.cache.list_objects(Kind.SECRET_DATA):
                if obj.data.kek_id != self.ring.current:
                    updated = pb.SecretData()
                    updated.CopyFrom(obj)
                    updated.data.CopyFrom(self.ring.rewrap(obj.data))
                    ops.append(Update(updated))
            if not ops:
                break
            conflicts, _ = await self.store.batch_chunked(ops)
            if not conflicts:
                return done + len(ops)
            # Some chunks lost a race (an update, a removal): count what landed, look again.
            await self.cache.sync()
            done += sum(
                1
                for op in ops
                if (now := self.cache.get(Kind.SECRET_DATA, op.obj.id)) is not None
                and now.data.kek_id == self.ring.current
            )
        return done
