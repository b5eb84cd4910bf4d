"""Admission of costly runtime steps: a few at once, in arrival order, ramping up.

A burst of containers made together (a service of twenty) would otherwise share the
cores until nearly all are done, and the first would run only when the last does.
After an idle spell the gate lets one through alone, then one more each time one
finishes, up to its limit: the first of a burst runs about as soon as a lone
container would, and the rest keep every core busy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType


class RampGate:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._open = 1  # how many may be through now (1 after an idle spell)
        self._through = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def through(self) -> int:
        return self._through

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def __aenter__(self) -> None:
        if self._through < self._open and not self._waiting:
            self._through += 1
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(admitted)
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self._leave()  # admitted just as it was cancelled: hand the place on
            else:
                self._waiting.remove(admitted)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leave()

    def _leave(self) -> None:
        self._through -= 1
        if self._through == 0 and not self._waiting:
            self._open = 1  # idle: the next burst starts with one alone
            return
        self._open = min(self.limit, self._open + 1)
        while self._waiting and self._through < self._open:
            admitted = self._waiting.popleft()
            if not admitted.done():
                self._through += 1
                admitted.set_result(None)
