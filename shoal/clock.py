"""Wall-clock helpers shared by manager, worker and CLI.

Timestamps in the store and in task status are milliseconds since the epoch
(UTC); certificates and renewal deadlines use aware UTC datetimes.
"""

from __future__ import annotations

import datetime
import time


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return int(time.time() * 1000)


def utcnow() -> datetime.datetime:
    """The current time as an aware UTC datetime."""
    return datetime.datetime.now(datetime.UTC)
