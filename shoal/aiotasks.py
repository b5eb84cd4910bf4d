"""Background asyncio tasks: supervised (restarted with backoff when they fail), and
stopped without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

RESTART_MIN_S = 0.1
RESTART_MAX_S = 10.0
# A task that ran this long before failing starts its backoff afresh.
HEALTHY_AFTER_S = 60.0


async def supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Runs `run()` until it returns; when it fails, logs why and runs it again after a
    jittered, doubling delay. A background loop that dies on an error nobody mapped
    must not leave its process up but deaf (a stale cache, a manager without presence)."""
    loop = asyncio.get_running_loop()
    delay = RESTART_MIN_S
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting it in %.1fs", name, delay)
        if loop.time() - started > HEALTHY_AFTER_S:
            delay = RESTART_MIN_S
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, RESTART_MAX_S)


def supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """`supervise` as a named task."""
    return asyncio.create_task(supervise(name, run), name=name)


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


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a task waits: the chain of coroutines and generators it is in, outermost first."""
    chain = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "ag_frame", None)
        if frame is None:
            break
        chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        step = getattr(step, "cr_await", None) or getattr(step, "ag_await", None)
    return " > ".join(chain) or repr(task)


def log_tasks() -> None:
    """Every task of the running loop, grouped by where it waits, rarest first: a process
    that seems stuck shows what it waits on (the odd one out among many alike)."""
    where = Counter(awaiting(t) for t in asyncio.all_tasks())
    lines = [f"{n:6d}  {chain}" for chain, n in sorted(where.items(), key=lambda kv: kv[1])]
    log.warning("%d asyncio tasks, by where they wait:\n%s", sum(where.values()), "\n".join(lines))


def dump_tasks_on_sigusr1() -> None:
    """`kill -USR1 PID` logs where the process's tasks wait (see log_tasks)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_tasks)
