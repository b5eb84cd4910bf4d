"""Leader election on an etcd lease.

The leader key holds the leader's manager id and lives on its lease; whoever
creates it leads until the lease runs out. Every reconciler write is fenced on
the key's create_revision, so a leader that lost its lease (paused, cut off)
cannot write a single task after a successor took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shoal.aiotasks import first_completed
from shoal.manager.store import Fence, LeaseExpired, Store, StoreError

log = logging.getLogger(__name__)

LeaderWork = Callable[[Fence], Awaitable[None]]


class Election:
    def __init__(self, store: Store, manager_id: str, ttl_s: int = 5) -> None:
        self.store = store
        self.manager_id = manager_id
        self.ttl_s = ttl_s
        self.is_leader = False
        self.leader_id: str | None = None
        self._lease: int | None = None

    async def run(self, work: LeaderWork) -> None:
        """Campaigns forever; runs `work` while this manager leads, cancels it when not."""
        while True:
            try:
                self._lease = await self.store.grant_lease(self.ttl_s)
                fence = await self._campaign(self._lease)
                await self._lead(self._lease, fence, work)
            except StoreError as err:
                log.warning("leader election: %s; campaigning again", err)
                await asyncio.sleep(min(1.0, self.ttl_s / 3))
            except Exception:
                # A bug in leader work must not end the campaign for good.
                log.exception("leader work failed; campaigning again")
                await asyncio.sleep(1.0)

    async def resign(self) -> None:
        """Clean shutdown: revoking the lease hands leadership over at once, not after the TTL."""
        if self._lease is not None:
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(self._lease)

    async def _campaign(self, lease: int) -> Fence:
        key = self.store.keys.leader
        while True:
            claim = await self.store.create_leased(key, self.manager_id.encode(), lease)
            if claim.created:
                self.leader_id = self.manager_id
                return Fence(key, claim.revision)
            holder = claim.value.decode() if claim.value is not None else None
            if holder == self.manager_id and claim.lease != lease:
                # Our own previous life (killed, now restarted: the state dir lock
                # says it is gone) still holds the key: release it instead of
                # waiting out its TTL.
                log.info("releasing leadership held by this manager's previous run")
                await self.store.revoke_lease(claim.lease)
                continue
            if holder is not None:
                self.leader_id = holder
                # Keep our own lease alive meanwhile: it is the one we campaign with.
                await first_completed(
                    self._keep(lease), self.store.wait_deleted(key, claim.revision)
                )

    async def _keep(self, lease: int) -> None:
        async for _ in self.store.keep_alive(lease, self.ttl_s / 3):
            pass
        raise LeaseExpired("lease expired")

    async def _lead(self, lease: int, fence: Fence, work: LeaderWork) -> None:
        log.info("manager %s is the leader", self.manager_id)
        self.is_leader = True
        try:
            await first_completed(self._keep(lease), work(fence))
        finally:
            self.is_leader = False
            self.leader_id = None
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(lease)
            log.info("manager %s stopped leading", self.manager_id)
