"""Join admission: joins queue for a bounded number of slots instead of being refused,
and a source that keeps presenting bad tokens waits longer and longer.

A thousand hosts booting at once is an ordinary day (a power cycle): every honest
join must get through, one after another if need be. Token guessing must not get
the same service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from shoal.manager.hostprobe import peer_addr

# Signing and the node's first write take a few ms each; more in flight only
# makes every one of them slower.
CONCURRENT_JOINS = 16
PENALTY_BASE_S = 0.1
PENALTY_MAX_S = 10.0
# Failures older than this are forgotten; the table is pruned past MAX_SOURCES.
FORGET_AFTER_S = 600.0
MAX_SOURCES = 10_000


def source_of(peer: str) -> str:
    """gRPC's peer string -> the caller's address (the whole string if not IP)."""
    addr = peer_addr(peer)
    return addr[0] if addr is not None else peer


class JoinAdmission:
    def __init__(self, concurrency: int = CONCURRENT_JOINS) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._failures: dict[str, tuple[int, float]] = {}
        # For the metrics: joins waiting for a slot now; admitted and refused so far.
        self.waiting = 0
        self.admitted = 0
        self.refused = 0

    def penalty_s(self, source: str) -> float:
        count, last = self._failures.get(source, (0, 0.0))
        if count == 0 or time.monotonic() - last > FORGET_AFTER_S:
            return 0.0
        return float(min(PENALTY_BASE_S * 2 ** (count - 1), PENALTY_MAX_S))

    def failed(self, source: str) -> None:
        self.refused += 1
        count, last = self._failures.get(source, (0, 0.0))
        now = time.monotonic()
        if now - last > FORGET_AFTER_S:
            count = 0
        self._failures[source] = (count + 1, now)
        if len(self._failures) > MAX_SOURCES:
            stale = [s for s, (_, t) in self._failures.items() if now - t > FORGET_AFTER_S]
            for s in stale or list(self._failures)[: MAX_SOURCES // 10]:
                del self._failures[s]

    @contextlib.asynccontextmanager
    async def admit(self, source: str) -> AsyncIterator[None]:
        """Waits out the source's penalty, then for a free slot (the caller's deadline
        bounds both)."""
        penalty = self.penalty_s(source)
        self.waiting += 1
        try:
            if penalty:
                await asyncio.sleep(penalty)
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.admitted += 1
        try:
            yield
        finally:
            self._slots.release()
