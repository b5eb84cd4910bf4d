"""Test-only crash point for an agent: SIGKILL itself at a chosen step of overlay wiring.

A test puts this directory first on PYTHONPATH of one agent it starts and sets
SHOAL_TEST_KILL_BEFORE_MOVE=N: the agent dies, as a kill -9 would leave it, just
before the driver's Nth move of a device into another namespace (with a network new
on the host: 1 its VXLAN device, 2 a task's veth end into the network's namespace,
3 the other end into the task's; each further task on it: 2 more). Without the
variable nothing is changed. Python imports `sitecustomize` at start-up by itself.
"""

from __future__ import annotations

import os
import signal

_BEFORE = int(os.environ.get("SHOAL_TEST_KILL_BEFORE_MOVE", "0"))

if _BEFORE > 0:
    from shoal.overlay import driver

    _real_move = driver._move
    _moves = [0]

    async def _move(ipr: object, index: int, path: str) -> None:
        _moves[0] += 1
        if _moves[0] == _BEFORE:
            os.kill(os.getpid(), signal.SIGKILL)
        await _real_move(ipr, index, path)  # type: ignore[arg-type]

    driver._move = _move  # type: ignore[assignment]
