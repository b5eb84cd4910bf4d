"""A manager's presence in etcd: keys on a lease it keeps alive.

`managers/<id>` says the manager is up and where agents reach it;
`sessions/<node>` says which manager holds a node's agent session. When the
manager dies, its lease runs out and etcd deletes both, so the leader learns
which nodes lost their session even though the manager that had them cannot
say so (see manager/liveness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shoal.manager.store import Store, StoreError

log = logging.getLogger(__name__)

# Session claims that arrive together (agents re-registering after a manager
# restart) go out in one transaction.
BATCH_WINDOW_S = 0.02


class Presence:
    def __init__(self, store: Store, manager_id: str, addr: str, ttl_s: int) -> None:
        self.store = store
        self.manager_id = manager_id
        self.addr = addr
        self.ttl_s = ttl_s
        self._lease: int | None = None
        self._owned: set[str] = set()
        # node id -> True (claim) / False (release), not yet written.
        self._pending: dict[str, bool] = {}
        self._wakeup = asyncio.Event()
        self._delayed: dict[str, asyncio.TimerHandle] = {}

    def claim_session(self, node_id: str) -> None:
        """This manager now holds the node's session (written soon, batched)."""
        delayed = self._delayed.pop(node_id, None)
        if delayed is not None:
            delayed.cancel()
        self._owned.add(node_id)
        self._pending[node_id] = True
        self._wakeup.set()

    def release_session(self, node_id: str, after_s: float = 0.0) -> None:
        """The session ended; the key goes (after `after_s`) unless the node registered
        again meanwhile, here or with another manager."""
        if after_s > 0:
            self._delayed[node_id] = asyncio.get_running_loop().call_later(
                after_s, self.release_session, node_id
            )
            return
        self._delayed.pop(node_id, None)
        self._owned.discard(node_id)
        self._pending[node_id] = False
        self._wakeup.set()

    async def run(self) -> None:
        """Keeps the lease and the keys on it, re-creating both after the lease was lost."""
        while True:
            try:
                self._lease = await self.store.grant_lease(self.ttl_s)
                # A new lease carries every key this manager should hold.
                self._pending = {n: True for n in self._owned} | {
                    n: False for n, claim in self._pending.items() if not claim
                }
                await self.store.put_leased(
                    [(self.store.keys.manager(self.manager_id), self.addr.encode())], self._lease
                )
                self._wakeup.set()
                writer = asyncio.create_task(self._write_sessions())
                try:
                    async for _ in self.store.keep_alive(self._lease, self.ttl_s / 3):
                        if writer.done():
                            writer.result()
                    log.warning("presence lease expired; taking a new one")
                finally:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StoreError):
                        await writer
            except StoreError as err:
                log.warning("presence: %s; retrying", err)
                await asyncio.sleep(min(1.0, self.ttl_s / 3))

    async def resign(self) -> None:
        """Clean shutdown: the keys go at once, and the leader hands the sessions on."""
        if self._lease is not None:
            with contextlib.suppress(StoreError):
                await self.store.revoke_lease(self._lease)

    async def _write_sessions(self) -> None:
        keys = self.store.keys
        mine = self.manager_id.encode()
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(BATCH_WINDOW_S)
            self._wakeup.clear()
            pending, self._pending = self._pending, {}
            try:
                claims = [(keys.session(n), mine) for n, claim in pending.items() if claim]
                await self.store.put_leased(claims, self._lease or 0)
                for n in (n for n, claim in pending.items() if not claim):
                    await self.store.delete_if_value(keys.session(n), mine)
            except StoreError:
                # Keep what was not written (newer requests win) and let run() retry.
                self._pending = pending | self._pending
                raise
