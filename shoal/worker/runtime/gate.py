"""Admission of costly runtime steps: a few at once, in arrival order, ramping up.

A burst of containers made together (a service of twenty) would otherwise share the
cores until nearly all are done, and the first would run only when the last does.
After an idle spell the gate lets one through alone, then one more each time one
finishes, up to its limit: the first of a burst runs about as soon as a lone
container would, and the rest keep every core busy. While that first one is
through alone, `alone()` tells other work of the burst to wait (`until_shared`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

# How long the gate stays unused before the next one through goes alone again.
IDLE_RESET_S = 0.5
# How long one goes alone at most: a start stuck in containerd (its calls wait up to
# 30 s) must not hold up the node's other starts and creates with it.
ALONE_MAX_S = 2.0


class RampGate:
    def __init__(
        self, limit: int, idle_reset_s: float = IDLE_RESET_S, alone_max_s: float = ALONE_MAX_S
    ) -> None:
        self.limit = max(1, limit)
        self.idle_reset_s = idle_reset_s
        self.alone_max_s = alone_max_s
        self._alone_ends: asyncio.TimerHandle | None = None
        self._open = 1  # how many may be through now (1 after an idle spell)
        self._through = 0
        self._idle_since = float("-inf")
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._shared = asyncio.Event()
        self._shared.set()

    @property
    def through(self) -> int:
        return self._through

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def alone(self) -> bool:
        """The first of a burst is through, alone."""
        return not self._shared.is_set()

    async def until_shared(self) -> None:
        """Returns once no first-of-a-burst is through alone."""
        await self._shared.wait()

    async def __aenter__(self) -> None:
        if self._through == 0 and not self._waiting:
            if asyncio.get_running_loop().time() - self._idle_since >= self.idle_reset_s:
                self._open = 1
        if self._through < self._open and not self._waiting:
            self._enter()
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(admitted)
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self._leave()  # admitted just as it was cancelled: hand the place on
            elif admitted in self._waiting:  # not when _widen already passed over it
                self._waiting.remove(admitted)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    def _enter(self) -> None:
        self._through += 1
        if self._open == 1 and self.limit > 1:
            self._shared.clear()
            loop = asyncio.get_running_loop()
            self._alone_ends = loop.call_later(self.alone_max_s, self._widen)

    def _leave(self) -> None:
        self._through -= 1
        if self._through == 0 and not self._waiting:
            self._idle_since = asyncio.get_running_loop().time()
        self._widen()

    def _widen(self) -> None:
        """One more may go through (one finished, or the one alone took too long)."""
        if self._alone_ends is not None:
            self._alone_ends.cancel()
            self._alone_ends = None
        self._open = min(self.limit, self._open + 1)
        if self._open > 1:
            self._shared.set()
        while self._waiting and self._through < self._open:
            admitted = self._waiting.popleft()
            if not admitted.done():
                self._enter()
                admitted.set_result(None)
