"""Stopping asyncio tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancels tasks and waits until they are done.

    `asyncio.wait` neither raises the tasks' CancelledError nor hides a
    cancellation of the caller, unlike `suppress(CancelledError): await task`,
    which would also swallow the caller being cancelled meanwhile.
    """
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if live:
        await asyncio.wait(live)


async def first_completed(*coros: Awaitable[None]) -> None:
    """Runs coros until the first one ends; cancels the rest; re-raises its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        await cancel_and_wait(tasks)
