"""A worker agent process: identity (join or reload), runtime, worker, session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

from shoal.aiotasks import cancel_and_wait, supervised
from shoal.clock import utcnow
from shoal.httpd import HttpServer, load_chain, mtls_context, parse_http_addr
from shoal.mountpolicy import BindPolicy
from shoal.overlay.driver import OverlayDriver
from shoal.overlay.egress import DEFAULT_POOL as DEFAULT_EGRESS_POOL
from shoal.overlay.egress import Egress
from shoal.pki.identity import JOIN_KEY, NodeIdentity, join_key
from shoal.pki.join import JoinError, join, renew
from shoal.proto import objects_pb2 as pb
from shoal.statedir import lock_state_dir
from shoal.worker.hostcheck import check_same_mounts_as_containerd
from shoal.worker.logrotate import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, LogRotator
from shoal.worker.metrics import NodeUsageSampler, agent_registry
from shoal.worker.resolver import Resolver, host_resolvers
from shoal.worker.runtime import ociruntime
from shoal.worker.runtime.base import Runtime
from shoal.worker.secrets import DEFAULT_ROOT as secrets_root
from shoal.worker.secrets import TaskFiles, fetch_over
from shoal.worker.session import Session
from shoal.worker.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    state_dir: Path
    join_addr: str
    join_token: str = ""
    hostname: str = ""
    advertise_addr: str = ""
    containerd_socket: str = "/run/containerd/containerd.sock"
    runtime: str = "containerd"
    # The OCI runtime under containerd's runc shim: auto (crun if installed), crun, runc.
    oci_runtime: str = "runc"
    insecure_registries: set[str] = field(default_factory=set)
    # Bind-mount sources this node accepts (prefixes); empty: whatever the API allows.
    allow_bind_mounts: tuple[str, ...] = ()
    log_max_bytes: int = DEFAULT_MAX_BYTES
    log_max_files: int = DEFAULT_MAX_FILES
    # simulated runtime only: keep its "containers" on disk, so they outlive an
    # agent restart (tests); hollow nodes in benchmarks keep them in memory.
    simulated_state_on_disk: bool = True
    # Hollow nodes write no container logs; a thousand of them in a few processes
    # would each hold an inotify instance (128 per user by default) for nothing.
    rotate_logs: bool = True
    egress_pool: str = DEFAULT_EGRESS_POOL
    # None: the host's resolvers (/etc/resolv.conf).
    dns_upstreams: list[str] | None = None
    # /metrics and /healthz ("" = off).
    http_addr: str = ""


def _memory_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def make_runtime(config: WorkerConfig, node_id: str) -> Runtime:
    if config.runtime == "simulated":
        from shoal.worker.runtime.simulated import SimulatedRuntime

        state = config.state_dir / "simulated-containers"
        return SimulatedRuntime(state_dir=state if config.simulated_state_on_disk else None)
    from shoal.registry import RegistryClient
    from shoal.worker.runtime.containerd import ContainerdRuntime

    # Each node has its own containerd namespace: several nodes can share one containerd.
    return ContainerdRuntime(
        socket=config.containerd_socket,
        namespace=f"shoal-{node_id}",
        state_dir=config.state_dir,
        registry=RegistryClient(insecure=config.insecure_registries),
        binds=BindPolicy(
            allowed=config.allow_bind_mounts,
            forbidden=(str(config.state_dir.resolve()), os.path.dirname(config.containerd_socket)),
        ),
        oci_runtime=config.oci_runtime,
    )


class Agent:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.identity: NodeIdentity | None = None
        self.session: Session | None = None
        self.worker: Worker | None = None
        self.http: HttpServer | None = None
        self.oci_runtime = ""  # resolved at start (containerd only)

    def description(self) -> pb.NodeDescription:
        return pb.NodeDescription(
            hostname=self.config.hostname or socket.gethostname(),
            resources=pb.Resources(
                nano_cpus=(os.cpu_count() or 1) * 1_000_000_000, memory_bytes=_memory_bytes()
            ),
            os=platform.system().lower(),
            arch=platform.machine(),
            runtime=self.config.runtime,
            oci_runtime=self.oci_runtime,
        )

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = lock_state_dir(cfg.state_dir)
        runtime: Runtime | None = None
        background: list[asyncio.Task[None]] = []
        try:
            if cfg.runtime == "containerd":
                # Both refused up front (before joining), each in one line.
                self.oci_runtime, oci_path, why = ociruntime.resolve(cfg.oci_runtime)
                check_same_mounts_as_containerd(cfg.containerd_socket)
                log.info(
                    "containers run under the OCI runtime %s (%s)%s",
                    self.oci_runtime,
                    oci_path,
                    f", not crun: {why}" if why else "",
                )
                cfg.oci_runtime = self.oci_runtime
            self.identity = NodeIdentity.load(cfg.state_dir)
            if self.identity is None:
                if not cfg.join_token:
                    raise JoinError("this node has not joined yet: give --join-token")
                hostname = cfg.hostname or socket.gethostname()
                self.identity = await join_with_retry(
                    cfg.join_addr, cfg.join_token, hostname, cfg.state_dir
                )
                self.identity.save(cfg.state_dir)
                log.info("joined the cluster as node %s", self.identity.node_id)
            else:
                log.info("rejoining as node %s", self.identity.node_id)
            runtime = make_runtime(cfg, self.identity.node_id)
            self.session = Session(
                lambda: self._identity(), [cfg.join_addr], self.description, cfg.advertise_addr
            )
            # The node's CPU/memory ride on heartbeats (the web view's bars).
            self.session.usage = NodeUsageSampler()
            overlay = OverlayDriver(self.identity.node_id, cfg.advertise_addr)
            await overlay.start(cfg.join_addr)
            egress = Egress(cfg.egress_pool)
            await egress.start()
            upstreams = cfg.dns_upstreams if cfg.dns_upstreams is not None else host_resolvers()
            self.worker = Worker(
                runtime, cfg.state_dir, self.session.report, overlay, egress, Resolver(upstreams)
            )
            session = self.session
            self.worker.files = TaskFiles(
                secrets_root / self.identity.node_id,
                lambda task_id: fetch_over(
                    lambda: self._identity().channel(session.current_manager or cfg.join_addr),
                    task_id,
                ),
            )
            self.session.worker = self.worker
            await self.worker.start()
            if cfg.http_addr:
                self.http = self._http_server(runtime)
                await self.http.start()
            background = [
                supervised("session", self.session.run),
                supervised("certificate renewal", self._renew_certificate),
            ]
            if cfg.rotate_logs:
                rotator = LogRotator(self.worker.logs_dir, cfg.log_max_bytes, cfg.log_max_files)
                background.append(supervised("log rotation", rotator.run))
            await stop.wait()
            log.info("agent stopping; containers keep running")
            await self.session.leave()
        finally:
            if self.http is not None:
                await self.http.stop()
            await cancel_and_wait(background)
            if self.worker is not None:
                await self.worker.close()
            if runtime is not None:
                await runtime.close()
            os.close(lock_fd)

    def _http_server(self, runtime: Runtime) -> HttpServer:
        assert self.session is not None and self.identity is not None
        session = self.session
        addr = parse_http_addr(self.config.http_addr)
        ident = self.identity
        tls = None if addr.loopback else mtls_context(ident.cert_pem, ident.key_pem, ident.ca_pem)

        async def health() -> tuple[bool, str]:
            if session.connected.is_set():
                return True, f"ok: session with manager {session.current_manager}"
            return False, "no manager session"

        return HttpServer(addr, agent_registry(self.worker, runtime, session), health, tls)

    def _identity(self) -> NodeIdentity:
        assert self.identity is not None
        return self.identity

    async def _renew_certificate(self) -> None:
        while True:
            ident = self._identity()
            wait = (ident.renew_at() - utcnow()).total_seconds()
            await asyncio.sleep(max(wait, 0))
            assert self.session is not None
            addr = self.session.current_manager or self.config.join_addr
            try:
                renewed = await renew(ident, addr)
            except Exception as err:
                log.warning("certificate renewal via %s failed (%s); retrying in 30s", addr, err)
                await asyncio.sleep(30)
                continue
            renewed.save(self.config.state_dir)
            self.identity = renewed
            if self.http is not None and self.http.ssl_context is not None:
                load_chain(self.http.ssl_context, renewed.cert_pem, renewed.key_pem)
            log.info(
                "certificate renewed; valid until %s",
                renewed.renew_at().isoformat(timespec="seconds"),
            )


JOIN_BACKOFF_MAX_S = 30.0


async def join_with_retry(addr: str, token: str, hostname: str, state_dir: Path) -> NodeIdentity:
    """Joins, waiting out a busy or unreachable manager (a thousand hosts booting at once)
    with jittered exponential backoff; a refused token or CSR ends it at once.

    Every attempt uses the join key kept in state_dir: an attempt whose answer was lost
    (the manager made the node, then the call timed out) is then answered on retry with
    that same node, instead of leaving it behind as a node that never comes up."""
    key = join_key(state_dir)
    delay = 0.5
    while True:
        try:
            return await join(addr, token, hostname, key)
        except JoinError as err:
            if err.key_refused:
                where = state_dir / "certificates" / JOIN_KEY
                raise JoinError(f"{err} (to join as a new node, remove {where})") from None
            if not err.transient:
                raise
            wait = random.uniform(delay / 2, delay)
            log.warning("join: %s; trying again in %.1fs", err, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, JOIN_BACKOFF_MAX_S)
