"""SIGUSR1's task dump: every task, grouped by the chain of coroutines it waits in."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from shoal.aiotasks import dump_tasks_on_sigusr1


async def _stuck_inside(event: asyncio.Event) -> None:
    await event.wait()


async def _stuck_here(event: asyncio.Event) -> None:
    await _stuck_inside(event)


def test_sigusr1_logs_where_each_task_waits(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        event = asyncio.Event()
        alike = [asyncio.create_task(_stuck_here(event)) for _ in range(3)]
        odd = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        dump_tasks_on_sigusr1()
        with caplog.at_level(logging.WARNING, logger="shoal.aiotasks"):
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if caplog.records:
                    break
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        event.set()
        odd.cancel()
        await asyncio.gather(*alike, odd, return_exceptions=True)

    asyncio.run(main())
    text = caplog.records[0].getMessage()
    lines = text.splitlines()
    three = [line for line in lines if "_stuck_here" in line]
    assert len(three) == 1 and three[0].split()[0] == "3", text
    assert "_stuck_inside" in three[0]
    assert any(line.split()[0] == "1" and "sleep" in line for line in lines), text
