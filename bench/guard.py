"""Every benchmark ends by itself and cleans up when killed.

`scripts/bench` runs each one under `timeout` (SHOAL_BENCH_TIMEOUT, default 90
minutes); SIGTERM, SIGHUP and SIGINT (and SIGALRM, for a benchmark's own limit)
become SystemExit here, so the benchmark's `finally` blocks and context managers
stop what it started instead of leaving daemons and namespaces behind.
"""

from __future__ import annotations

import signal
from types import FrameType


def _exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_signals(limit_s: float = 0) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, _exit)
    if limit_s > 0:
        signal.alarm(int(limit_s))
