"""The unpacker's apply slots: a freed slot goes to the lowest layer waiting, and a
waiter cancelled as it is granted one passes it on (no slot lost)."""

from __future__ import annotations

import asyncio

from shoal.worker.runtime.unpack import Slots


async def test_a_freed_slot_goes_to_the_lowest_layer_waiting() -> None:
    slots = Slots(1)
    order: list[int] = []
    gate = asyncio.Event()

    async def hold(n: int) -> None:
        async with slots.take(n):
            order.append(n)
            await gate.wait()

    first = asyncio.ensure_future(hold(9))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(hold(n)) for n in (5, 3, 7)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *rest)
    assert order == [9, 3, 5, 7]
    assert slots.free == 1 and not slots.waiting


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(2)
    release = asyncio.Event()

    async def hold(n: int) -> None:
        async with slots.take(n):
            await release.wait()

    held = [asyncio.ensure_future(hold(n)) for n in (1, 2)]
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(hold(n)) for n in (3, 4)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while waiting
    release.set()
    await asyncio.sleep(0)
    waiting[1].cancel()  # possibly cancelled just as it is granted the slot
    await asyncio.gather(*held, *waiting, return_exceptions=True)
    assert slots.free == 2 and not slots.waiting
