"""A manager process: etcd (embedded or external), the store cache, the control
API on its socket, and a campaign for leadership that runs the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio

from shoal import defaults
from shoal.manager import ca
from shoal.manager.controlapi import ControlAPI
from shoal.manager.election import Election
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.ids import new_id
from shoal.manager.reconciler import Reconciler
from shoal.manager.store import (
    AlreadyExists,
    Cache,
    EtcdConnection,
    EtcdTLS,
    Kind,
    Store,
)
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class ManagerConfig:
    state_dir: Path
    listen_addr: str = "0.0.0.0:4242"
    advertise_addr: str = ""
    control_socket: Path | None = None
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_tls: EtcdTLS | None = None
    join_addr: str = ""
    join_token: str = ""
    # How long a dead leader holds on before another manager takes over.
    leader_ttl_s: int = 5

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


class StateDirLocked(RuntimeError):
    pass


def _lock_state_dir(state_dir: Path) -> int:
    fd = os.open(state_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirLocked(f"state dir {state_dir} is in use by another swarmd") from None
    return fd


def load_or_create_id(state_dir: Path) -> str:
    """The node ID, kept in the state dir so a restart comes back as the same node."""
    path = state_dir / "node_id"
    if path.exists():
        return path.read_text().strip()
    node_id = new_id()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id)
    tmp.replace(path)
    return node_id


async def ensure_cluster(store: Store) -> pb.Cluster:
    """Creates the cluster (root CA, join tokens) if etcd holds none yet."""
    existing = await store.list_objects(Kind.CLUSTER)
    if existing:
        return existing[0]  # type: ignore[return-value]
    cluster_id = new_id()
    root = ca.new_root_ca(cluster_id)
    cluster = pb.Cluster(
        id=cluster_id,
        spec=defaults.cluster_spec(),
        root_ca=root,
        join_tokens=pb.JoinTokens(
            worker=ca.new_join_token(root.ca_digest),
            manager=ca.new_join_token(root.ca_digest),
        ),
    )
    try:
        await store.create(cluster)
        log.info("created cluster %s", cluster_id)
        return cluster
    except AlreadyExists:
        # Another manager created it at the same moment: use theirs.
        return (await store.list_objects(Kind.CLUSTER))[0]  # type: ignore[return-value]


class JoinRefused(RuntimeError):
    pass


async def check_manager_token(store: Store, token: str) -> None:
    """A joining manager must hold the cluster's current manager token for this CA."""
    try:
        parsed = ca.parse_join_token(token)
    except ValueError as err:
        raise JoinRefused(str(err)) from None
    clusters = await store.list_objects(Kind.CLUSTER)
    if not clusters:
        raise JoinRefused("there is no cluster to join in this etcd")
    cluster = clusters[0]
    assert isinstance(cluster, pb.Cluster)
    if parsed.digest != cluster.root_ca.ca_digest:
        raise JoinRefused("the join token's CA digest does not match the cluster's root CA")
    if ca.token_role(cluster, token) != pb.ROLE_MANAGER:
        raise JoinRefused("the join token is not a current manager token of this cluster")


class Manager:
    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.id = ""
        self.etcd: EmbeddedEtcd | None = None
        self.store: Store | None = None
        self.cache: Cache | None = None
        self.election: Election | None = None
        self.reconciler: Reconciler | None = None

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = _lock_state_dir(cfg.state_dir)
        server: grpc.aio.Server | None = None
        campaign: asyncio.Task[None] | None = None
        try:
            self.id = load_or_create_id(cfg.state_dir)
            endpoints = cfg.etcd_endpoints
            if not endpoints:
                self.etcd = EmbeddedEtcd(cfg.state_dir)
                await self.etcd.start()
                endpoints = [self.etcd.endpoint]
                log.info("embedded etcd on %s", self.etcd.endpoint)
            self.store = Store(EtcdConnection(endpoints, cfg.etcd_tls))
            if cfg.join_token:
                await check_manager_token(self.store, cfg.join_token)
            await ensure_cluster(self.store)
            self.cache = Cache(self.store)
            await self.cache.start()

            server = grpc.aio.server()
            api_grpc.add_ControlServicer_to_server(ControlAPI(self.store, self.cache), server)
            sock = cfg.socket_path
            sock.parent.mkdir(parents=True, exist_ok=True)
            sock.unlink(missing_ok=True)
            # Root-only from the first moment: create the socket under a tight umask.
            old_umask = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix://{sock}")
                await server.start()
            finally:
                os.umask(old_umask)
            os.chmod(sock, 0o600)
            log.info("manager %s: control API on %s", self.id, sock)

            self.election = Election(self.store, self.id, cfg.leader_ttl_s)
            self.reconciler = Reconciler(self.store, self.cache)
            campaign = asyncio.create_task(self.election.run(self.reconciler.run))
            await stop.wait()
            log.info("manager %s: shutting down", self.id)
        finally:
            if campaign is not None:
                campaign.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await campaign
            if self.election is not None:
                await self.election.resign()
            if server is not None:
                await server.stop(grace=2)
                cfg.socket_path.unlink(missing_ok=True)
            if self.cache is not None:
                await self.cache.stop()
            if self.store is not None:
                await self.store.close()
            if self.etcd is not None:
                await self.etcd.stop()
            os.close(lock_fd)
