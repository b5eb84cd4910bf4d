"""A manager process: etcd (embedded or external), the store cache, the control
API on its socket, and a campaign for leadership that runs the reconcilers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from shoal import defaults
from shoal.aiotasks import cancel_and_wait, first_completed, supervised
from shoal.clock import utcnow
from shoal.httpd import parse_http_addr
from shoal.manager.authz import RoleAuthorizer
from shoal.manager.controlapi import ControlAPI
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.election import Election
from shoal.manager.etcd_embedded import EmbeddedEtcd
from shoal.manager.events import Journal
from shoal.manager.ids import new_id
from shoal.manager.keys import Keyring, open_root_ca, seal_root_ca
from shoal.manager.keyservice import KeyKeeper, KeyringService, prepare_keyring, seal_existing_ca
from shoal.manager.liveness import NodeLiveness
from shoal.manager.metrics import ManagerMetrics
from shoal.manager.nodeca import NodeCA, new_node
from shoal.manager.observe import ManagerHttp
from shoal.manager.pinning import ImagePinner
from shoal.manager.presence import Presence
from shoal.manager.reconciler import Reconciler
from shoal.manager.restapi import RestAPI
from shoal.manager.store import (
    AlreadyExists,
    Cache,
    Conflict,
    EtcdAuth,
    EtcdConnection,
    EtcdTLS,
    Fence,
    Kind,
    NotFound,
    Store,
)
from shoal.manager.tcpalive import PING_OPTIONS, keep_alive_on_port
from shoal.pki import ca
from shoal.pki.identity import NodeIdentity, join_key
from shoal.pki.join import join, join_addr_for
from shoal.proto import ca_pb2_grpc, dispatcher_pb2_grpc, keys_pb2_grpc
from shoal.proto import control_pb2_grpc as api_grpc
from shoal.proto import objects_pb2 as pb
from shoal.restsock import rest_socket
from shoal.statedir import lock_state_dir

log = logging.getLogger(__name__)


@dataclass
class ManagerConfig:
    state_dir: Path
    listen_addr: str = "0.0.0.0:4242"
    advertise_addr: str = ""
    control_socket: Path | None = None
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_tls: EtcdTLS | None = None
    etcd_auth: EtcdAuth | None = None
    join_addr: str = ""
    join_token: str = ""
    hostname: str = ""
    # How long a dead leader holds on before another manager takes over.
    leader_ttl_s: int = 5
    # /metrics, /healthz and the web view ("" = off).
    http_addr: str = ""

    # Registries the manager reaches over plain HTTP to pin image tags (as the workers').
    insecure_registries: set[str] = field(default_factory=set)

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"

    @property
    def rest_socket_path(self) -> Path:
        """The HTTP/JSON socket of the reads, beside the control socket."""
        return Path(rest_socket(str(self.socket_path)))

    @property
    def join_listen_addr(self) -> str:
        return join_addr_for(self.listen_addr)

    @property
    def remote_addr(self) -> str:
        """host:port agents should use to reach this manager ("" if unknown)."""
        host, _, port = self.listen_addr.rpartition(":")
        if self.advertise_addr:
            return (
                self.advertise_addr
                if ":" in self.advertise_addr
                else (f"{self.advertise_addr}:{port}")
            )
        return "" if host in ("", "0.0.0.0", "::", "[::]") else self.listen_addr


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


async def ensure_cluster(store: Store, ring: Keyring) -> pb.Cluster:
    """Creates the cluster (root CA, join tokens) if etcd holds none yet; a CA key
    still in plain text (a cluster from before keys) is sealed."""
    if await store.cluster() is not None:
        return await seal_existing_ca(store, ring)
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
    # The CA key goes to etcd sealed with the KEK, never in plain text.
    seal_root_ca(cluster, ring)
    try:
        await store.create(cluster)
        log.info("created cluster %s", cluster_id)
        return cluster
    except AlreadyExists:
        # Another manager created it at the same moment: use theirs.
        return await seal_existing_ca(store, ring)


async def ensure_manager_node(store: Store, node_id: str, hostname: str, addr: str) -> None:
    """The manager's own entry in `node ls`. A manager runs no tasks: its node is
    drained, and it never gets an agent session that would make it ready."""
    for _ in range(5):
        try:
            node = await store.get(Kind.NODE, node_id)
        except NotFound:
            node = new_node(node_id, pb.ROLE_MANAGER, hostname)
            node.manager_status.addr = addr
            try:
                await store.create(node)
                return
            except AlreadyExists:
                continue
        assert isinstance(node, pb.Node)
        if node.description.hostname == hostname and node.manager_status.addr == addr:
            return
        node.description.hostname = hostname
        node.manager_status.addr = addr
        try:
            await store.update(node)
            return
        except Conflict:
            continue


# No SO_REUSEPORT: a second manager on the same port must fail, not share it.
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
SESSION_OPTIONS = [*SERVER_OPTIONS, *PING_OPTIONS]
# A reconcile pass normally takes milliseconds; one this old is hung.
RECONCILE_STUCK_S = 120.0
WATCHDOG_EVERY_S = 5.0


class JoinRefused(RuntimeError):
    pass


async def check_manager_token(store: Store, token: str) -> None:
    """A joining manager must hold the cluster's current manager token for this CA."""
    try:
        parsed = ca.parse_join_token(token)
    except ValueError as err:
        raise JoinRefused(str(err)) from None
    cluster = await store.cluster()
    if cluster is None:
        raise JoinRefused("there is no cluster to join in this etcd")
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
        self.dispatcher: Dispatcher | None = None
        self.presence: Presence | None = None
        self.liveness: NodeLiveness | None = None
        self.keys: KeyKeeper | None = None
        self.nodeca: NodeCA | None = None
        self.metrics: ManagerMetrics | None = None
        self.http: ManagerHttp | None = None
        self.journal: Journal | None = None

    async def _identify(self) -> str:
        """This manager's node id: from its state dir, by joining, or new (first manager)."""
        cfg = self.config
        assert self.store is not None
        ident = NodeIdentity.load(cfg.state_dir)
        if ident is not None:
            return ident.node_id
        if not cfg.join_addr:
            return load_or_create_id(cfg.state_dir)
        # The token must fit the cluster in *this* etcd before the other manager is asked
        # for a certificate (which creates a node, named by the key kept until joined).
        await check_manager_token(self.store, cfg.join_token)
        ident = await join(cfg.join_addr, cfg.join_token, self._hostname(), join_key(cfg.state_dir))
        if ident.role != pb.ROLE_MANAGER:
            raise JoinRefused("the manager at --join-addr issued a worker certificate")
        ident.save(cfg.state_dir)
        log.info("joined the cluster through %s as manager %s", cfg.join_addr, ident.node_id)
        return ident.node_id

    async def _keys_and_cluster(self) -> tuple[Keyring, pb.Cluster]:
        """The keyring, and the cluster with its CA key opened (in memory only)."""
        assert self.store is not None
        cfg = self.config
        ring = await prepare_keyring(
            cfg.state_dir, self.store, cfg.join_addr, NodeIdentity.load(cfg.state_dir)
        )
        cluster = await ensure_cluster(self.store, ring)
        cluster.root_ca.CopyFrom(open_root_ca(cluster, ring))
        return ring, cluster

    def _peers(self) -> list[str]:
        """The other live managers' addresses."""
        assert self.cache is not None
        return sorted(a for i, a in self.cache.managers().items() if a and i != self.id)

    def _managers(self) -> list[str]:
        """Every live manager, this one first: agents fail over along the list."""
        addr = self.config.remote_addr
        return [addr, *self._peers()] if addr else self._peers()

    def _hostname(self) -> str:
        return self.config.hostname or socket.gethostname()

    async def _lead(self, fence: Fence) -> None:
        """The leader's work: the reconcilers, and node liveness across managers."""
        assert self.reconciler is not None and self.liveness is not None
        if self.metrics is not None:
            self.metrics.became_leader()
            self.reconciler.on_pass = self.metrics.on_pass
        try:
            await first_completed(
                self.reconciler.run(fence), self.liveness.run(fence), self._watchdog()
            )
        finally:
            if self.metrics is not None:
                self.metrics.lost_leadership()

    async def _watchdog(self) -> None:
        """A leader whose reconcile pass hangs gives leadership up (the election then
        revokes its lease) rather than keep the lease doing nothing."""
        assert self.reconciler is not None
        while True:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            stuck = self.reconciler.stuck_for_s()
            if stuck > RECONCILE_STUCK_S:
                raise ReconcilerStuck(f"a reconcile pass has run for {stuck:.0f}s")

    def _server_credentials(self, cluster: pb.Cluster, client_auth: bool) -> grpc.ServerCredentials:
        """TLS with this manager's certificate, re-issued at half its life (no restart)."""
        identity = ServerIdentity(cluster, self.id)
        return grpc.dynamic_ssl_server_credentials(
            identity.configuration(),
            identity.refresh,
            require_client_authentication=client_auth,
        )

    async def _node_exists(self, node_id: str) -> bool:
        """From the watch-fed cache; a miss is checked again after a sync, since another
        manager may have just admitted the node."""
        assert self.cache is not None
        if self.cache.get(Kind.NODE, node_id) is not None:
            return True
        await self.cache.sync()
        return self.cache.get(Kind.NODE, node_id) is not None

    async def _serve_remote(
        self, cluster: pb.Cluster, control: ControlAPI, servers: list[grpc.aio.Server]
    ) -> None:
        assert self.store is not None and self.cache is not None and self.dispatcher is not None
        cfg = self.config
        assert self.keys is not None
        nodeca = self.nodeca = NodeCA(self.store, self.cache, self.keys.root_ca)
        # Agents and remote managers: mTLS, each RPC allowed by the caller's role.
        remote = grpc.aio.server(
            interceptors=[RoleAuthorizer(cluster.id, self._node_exists)], options=SESSION_OPTIONS
        )
        api_grpc.add_ControlServicer_to_server(control, remote)
        ca_pb2_grpc.add_NodeCAServicer_to_server(nodeca, remote)
        dispatcher_pb2_grpc.add_DispatcherServicer_to_server(self.dispatcher, remote)
        keys_pb2_grpc.add_KeyringServicer_to_server(
            KeyringService(lambda: self.keys.ring if self.keys else None), remote
        )
        # Joining nodes: TLS without client certificates; only the token-guarded join RPC.
        joins = grpc.aio.server(interceptors=[RoleAuthorizer(cluster.id)], options=SERVER_OPTIONS)
        ca_pb2_grpc.add_NodeCAServicer_to_server(nodeca, joins)
        for server, addr, client_auth in (
            (remote, cfg.listen_addr, True),
            (joins, cfg.join_listen_addr, False),
        ):
            creds = self._server_credentials(cluster, client_auth)
            port = server.add_secure_port(addr, creds)
            if port == 0:
                raise OSError(f"cannot listen on {addr}")
            await server.start()
            servers.append(server)
            # Agents' sessions: a dead peer whose host vanished without closing the
            # connection is found in <= 2 s; with the 1 s grace after a lost session
            # its tasks move in under 4 s.
            if client_auth and not keep_alive_on_port(port):
                log.warning("no listener on port %d found: dead agents found by pings", port)
        log.info(
            "manager %s: agents on %s (mTLS), joins on %s",
            self.id,
            cfg.listen_addr,
            cfg.join_listen_addr,
        )

    async def _serve_local(
        self, control: ControlAPI, servers: list[grpc.aio.Server]
    ) -> grpc.aio.Server:
        """Local callers: the control socket, guarded by file permissions (root)."""
        server = grpc.aio.server()
        servers.append(server)
        api_grpc.add_ControlServicer_to_server(control, server)
        sock = self.config.socket_path
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
        return server

    async def _serve_http(self, cluster: pb.Cluster) -> None:
        """--http-addr: /metrics, /healthz and the web view."""
        if self.metrics is None:
            return
        assert self.store is not None and self.cache is not None and self.dispatcher is not None
        if self.nodeca is not None:
            self.metrics.watch_joins(self.nodeca.admission, self.cache)
        self.http = ManagerHttp(
            parse_http_addr(self.config.http_addr),
            self.metrics,
            (self.store, self.cache, self.dispatcher),
            cluster,
            self.id,
        )
        await self.http.start()

    async def _open_store(self) -> Store:
        """The store on the configured etcd, or on an embedded one started here."""
        cfg = self.config
        endpoints, tls = cfg.etcd_endpoints, cfg.etcd_tls
        if not endpoints:
            self.etcd = EmbeddedEtcd(cfg.state_dir)
            await self.etcd.start()
            endpoints, tls = [self.etcd.endpoint], self.etcd.tls
            log.info("embedded etcd on %s (TLS, client certificates only)", self.etcd.url)
        if cfg.http_addr:
            self.metrics = ManagerMetrics()  # before the store: it times etcd calls
        timers = [self.metrics.etcd_timer] if self.metrics is not None else None
        return Store(EtcdConnection(endpoints, tls, cfg.etcd_auth, timers))

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = lock_state_dir(cfg.state_dir)
        server: grpc.aio.Server | None = None
        servers: list[grpc.aio.Server] = []
        campaign: asyncio.Task[None] | None = None
        presence: asyncio.Task[None] | None = None
        background: list[asyncio.Task[None]] = []
        pinner: ImagePinner | None = None
        rest: RestAPI | None = None
        try:
            self.store = await self._open_store()
            self.id = await self._identify()
            ring, cluster = await self._keys_and_cluster()
            await ensure_manager_node(self.store, self.id, self._hostname(), cfg.remote_addr)
            self.cache = Cache(self.store)
            await self.cache.start()
            self.presence = Presence(self.store, self.id, cfg.remote_addr, cfg.leader_ttl_s)
            presence = supervised("presence", self.presence.run)
            self.keys = KeyKeeper(
                ring, self.store, self.cache, self.id, self._peers, cluster.root_ca
            )
            self.dispatcher = Dispatcher(
                self.store, self.cache, self._managers, self.presence, self.keys
            )
            await self.dispatcher.start()
            pinner = ImagePinner(cfg.insecure_registries)
            control = ControlAPI(
                self.store,
                self.cache,
                self.dispatcher,
                pinner,
                reconciler_idle=lambda: self.reconciler is not None and self.reconciler.idle(),
                keys=self.keys,
            )
            self.journal = control.journal = Journal(self.cache)
            background.append(asyncio.create_task(self.journal.run(), name="events"))

            await self._serve_remote(cluster, control, servers)
            # The reads' socket first: whoever sees the control socket answer can read.
            rest = RestAPI(control, cfg.rest_socket_path)
            await rest.start()
            server = await self._serve_local(control, servers)
            await self._serve_http(cluster)

            self.election = Election(self.store, self.id, cfg.leader_ttl_s)
            self.reconciler = Reconciler(self.store, self.cache)
            self.liveness = NodeLiveness(self.store, self.cache)
            campaign = asyncio.create_task(self.election.run(self._lead))
            await stop.wait()
            log.info("manager %s: shutting down", self.id)
        finally:
            await cancel_and_wait([campaign])
            if self.http is not None:
                await self.http.stop()
            await cancel_and_wait(background)
            if self.election is not None:
                await self.election.resign()
            if self.dispatcher is not None:
                await self.dispatcher.stop()
            await cancel_and_wait([presence])
            if self.presence is not None:
                await self.presence.resign()
            if rest is not None:
                await rest.stop()
            for srv in servers:
                await srv.stop(grace=2)
            if pinner is not None:
                await pinner.close()
            if server is not None:
                cfg.socket_path.unlink(missing_ok=True)
            if self.cache is not None:
                await self.cache.stop()
            if self.store is not None:
                await self.store.close()
            if self.etcd is not None:
                await self.etcd.stop()
            os.close(lock_fd)


class ReconcilerStuck(RuntimeError):
    pass


class ServerIdentity:
    """This manager's TLS certificate; gRPC asks `refresh` before each handshake."""

    def __init__(self, cluster: pb.Cluster, manager_id: str) -> None:
        self.cluster = cluster
        self.manager_id = manager_id
        self.renew_at = utcnow()

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        chain, key, validity = ca.manager_server_cert(self.cluster, self.manager_id)
        self.renew_at = utcnow() + validity / 2
        return grpc.ssl_server_certificate_configuration(
            [(key, chain)], root_certificates=self.cluster.root_ca.ca_cert_pem
        )

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        if utcnow() < self.renew_at:
            return None
        return self.configuration()
