"""An event loop on a virtual clock, for tests of timing logic (heartbeats, down timers)
that must not depend on how busy the machine is: when nothing is ready to run, the
clock jumps to the next timer instead of waiting for it."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise RuntimeError("virtual time: the loop would wait forever (nothing scheduled)")
        # Rounded to the nanosecond: sums of float periods would fall just short of a
        # deadline (0.2 * 10 < 2.0), which a real clock never does.
        self.now = round(self.now + max(timeout, 0.0), 9)
        return super().select(0)  # real fds (the loop's self-pipe) still count


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
