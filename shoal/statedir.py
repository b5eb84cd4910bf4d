"""A daemon's state dir: one daemon at a time (a lock), and its node ID."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StateDirLocked(RuntimeError):
    pass


def lock_state_dir(state_dir: Path) -> int:
    """Takes the state dir's lock for this process's lifetime; returns the fd to close."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirLocked(f"state dir {state_dir} is in use by another swarmd") from None
    return fd
