"""The runtime's start gate: arrival order, one alone after an idle spell, ramping up."""

from __future__ import annotations

import asyncio

from shoal.worker.runtime.gate import RampGate


async def _burst(gate: RampGate, n: int) -> tuple[list[int], list[int]]:
    """n holders arriving together; each holds until released. (order of entry, and
    how many were through at each entry)."""
    entered: list[int] = []
    seen: list[int] = []
    release = [asyncio.Event() for _ in range(n)]
    inside = [asyncio.Event() for _ in range(n)]

    async def hold(i: int) -> None:
        async with gate:
            entered.append(i)
            seen.append(gate.through)
            inside[i].set()
            await release[i].wait()

    holders = [asyncio.create_task(hold(i)) for i in range(n)]
    for i in range(n):
        # Release in arrival order once each has entered.
        await inside[i].wait()
        release[i].set()
    await asyncio.gather(*holders)
    return entered, seen


def test_first_alone_then_ramps_to_limit_in_arrival_order() -> None:
    async def main() -> None:
        gate = RampGate(3)
        entered, seen = await _burst(gate, 8)
        assert entered == list(range(8))
        assert seen[0] == 1  # the first of the burst alone
        assert max(seen) == 3  # never more than the limit
        assert gate.through == 0 and gate.waiting == 0

    asyncio.run(main())


def test_ramp_opens_one_more_per_finish() -> None:
    async def main() -> None:
        gate = RampGate(4)
        inside = 0
        peak: list[int] = []
        done = asyncio.Event()
        finishes = 0

        async def hold() -> None:
            nonlocal inside, finishes
            async with gate:
                inside += 1
                peak.append(inside)
                await asyncio.sleep(0.01)
                inside -= 1
            finishes += 1
            if finishes == 10:
                done.set()

        tasks = [asyncio.create_task(hold()) for _ in range(10)]
        await done.wait()
        await asyncio.gather(*tasks)
        assert peak[0] == 1
        assert peak[1] <= 2  # after the first finished: two open
        assert max(peak) == 4

    asyncio.run(main())


def test_only_an_idle_spell_resets_to_one() -> None:
    async def main() -> None:
        gate = RampGate(4, idle_reset_s=0.2)
        await _burst(gate, 6)
        # Right after a burst the gate is still open wide: two enter together.
        _, seen = await _burst(gate, 2)
        assert seen == [1, 2]
        await asyncio.sleep(0.25)
        # After an idle spell the first goes alone again.
        _, seen = await _burst(gate, 2)
        assert seen == [1, 1]

    asyncio.run(main())


def test_others_wait_while_the_first_of_a_burst_is_through_alone() -> None:
    async def main() -> None:
        gate = RampGate(4)
        release = asyncio.Event()
        order: list[str] = []

        async def first() -> None:
            async with gate:
                order.append("first in")
                await release.wait()
                order.append("first out")

        async def other() -> None:
            await gate.until_shared()
            order.append("other")

        holder = asyncio.create_task(first())
        await asyncio.sleep(0)
        assert gate.alone()
        waiter = asyncio.create_task(other())
        await asyncio.sleep(0.01)
        assert order == ["first in"]
        release.set()
        await asyncio.gather(holder, waiter)
        assert order == ["first in", "first out", "other"]
        assert not gate.alone()

    asyncio.run(main())


def test_a_gate_of_one_is_never_alone() -> None:
    async def main() -> None:
        gate = RampGate(1)
        async with gate:
            assert not gate.alone()
            await asyncio.wait_for(gate.until_shared(), 1)

    asyncio.run(main())


def test_cancelled_waiter_gives_its_place_on() -> None:
    async def main() -> None:
        gate = RampGate(1)
        release = asyncio.Event()
        entered: list[str] = []

        async def hold(name: str) -> None:
            async with gate:
                entered.append(name)
                await release.wait()

        first = asyncio.create_task(hold("first"))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(hold("cancelled"))
        last = asyncio.create_task(hold("last"))
        await asyncio.sleep(0)
        assert gate.waiting == 2
        cancelled.cancel()
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, last)
        assert entered == ["first", "last"]
        assert gate.through == 0 and gate.waiting == 0

    asyncio.run(main())


def test_cancelled_just_after_admission_leaves_no_place_taken() -> None:
    async def main() -> None:
        gate = RampGate(1)
        release = asyncio.Event()

        async def hold() -> None:
            async with gate:
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        second = asyncio.create_task(hold())
        await asyncio.sleep(0)
        release.set()
        await first  # admits second (its future set), before second runs
        second.cancel()
        try:
            await second
        except asyncio.CancelledError:
            pass
        assert gate.through == 0 and gate.waiting == 0
        async with gate:  # still usable
            assert gate.through == 1

    asyncio.run(main())


def test_one_stuck_alone_holds_the_others_up_only_so_long() -> None:
    async def main() -> None:
        gate = RampGate(4, alone_max_s=0.1)
        stuck = asyncio.Event()

        async def hold_forever() -> None:
            async with gate:
                await stuck.wait()

        holder = asyncio.create_task(hold_forever())
        await asyncio.sleep(0)
        assert gate.alone()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(gate.until_shared(), 2)
        async with gate:  # a second one gets through too, the first still stuck
            waited = loop.time() - began
            assert gate.through == 2
        assert 0.05 <= waited < 1.5
        stuck.set()
        await holder

    asyncio.run(main())


def test_cancelled_as_the_place_frees_leaves_the_gate_consistent() -> None:
    async def main() -> None:
        gate = RampGate(1)
        release = asyncio.Event()

        async def hold() -> None:
            async with gate:
                await release.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert gate.waiting == 1
        # In one turn of the loop: the first leaves (and passes over the cancelled
        # waiter) before the waiter itself sees its cancellation.
        release.set()
        waiter.cancel()
        await first
        try:
            await waiter
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the waiter was not cancelled")
        assert gate.through == 0 and gate.waiting == 0
        async with gate:  # still usable
            assert gate.through == 1

    asyncio.run(main())
