"""A manager's HTTP side (`--http-addr`): metrics, health, and the web view at /."""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl

from shoal.aiotasks import cancel_and_wait
from shoal.httpd import HttpAddr, HttpServer, load_chain, mtls_context
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.metrics import ManagerMetrics, run_observer
from shoal.manager.store import Cache, Store
from shoal.manager.webview import WebView
from shoal.pki import ca
from shoal.proto import objects_pb2 as pb

log = logging.getLogger(__name__)

ETCD_HEALTH_TIMEOUT_S = 2.0


class ManagerHttp:
    def __init__(
        self,
        addr: HttpAddr,
        metrics: ManagerMetrics,
        parts: tuple[Store, Cache, Dispatcher],
        cluster: pb.Cluster,
        manager_id: str,
    ) -> None:
        store, cache, dispatcher = parts
        self.addr = addr
        self.metrics = metrics
        self.store = store
        self.cache = cache
        self.cluster = cluster
        self.manager_id = manager_id
        self._tls: ssl.SSLContext | None = None
        self._renew_at = datetime.datetime.now(datetime.UTC)
        if not addr.loopback:
            self._tls = mtls_context(*self._certificate(), cluster.root_ca.ca_cert_pem)
        self.server = HttpServer(addr, metrics.registry, self.health, self._tls)
        self.webview = WebView(cache, lambda: dispatcher.usage, dispatcher.logs)
        self.traffic = dispatcher.traffic
        self.webview.mount(self.server.app)
        self._tasks: list[asyncio.Task[None]] = []

    def _certificate(self) -> tuple[bytes, bytes]:
        """A server certificate from the cluster CA (renewed at half its life)."""
        chain, key, validity = ca.manager_server_cert(self.cluster, self.manager_id)
        self._renew_at = datetime.datetime.now(datetime.UTC) + validity / 2
        return chain, key

    async def _renew(self) -> None:
        assert self._tls is not None
        while True:
            wait = (self._renew_at - datetime.datetime.now(datetime.UTC)).total_seconds()
            await asyncio.sleep(max(wait, 1.0))
            load_chain(self._tls, *self._certificate())

    async def health(self) -> tuple[bool, str]:
        try:
            await asyncio.wait_for(self.store.revision(), ETCD_HEALTH_TIMEOUT_S)
        except Exception as err:
            return False, f"etcd unreachable: {err or type(err).__name__}"
        leader = self.cache.leader_id()
        if leader is None:
            return False, "no leader known"
        role = "leader" if leader == self.manager_id else f"follower of {leader}"
        return True, f"ok: etcd reachable, {role}"

    async def start(self) -> None:
        self.metrics.attach(self.cache)
        self.metrics.watch_sessions(self.traffic)
        self._tasks.append(asyncio.create_task(run_observer(self.metrics, self.cache)))
        if self._tls is not None:
            self._tasks.append(asyncio.create_task(self._renew()))
        await self.server.start()

    async def stop(self) -> None:
        await self.webview.stop()
        await self.server.stop()
        await cancel_and_wait(self._tasks)
