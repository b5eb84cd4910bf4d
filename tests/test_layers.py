"""Layers inflated as they download (shoal.worker.runtime.layers), without daemons."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator

import pytest

from shoal.worker.runtime.base import ImagePullError
from shoal.worker.runtime.layers import Inflater, Turns


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _run(inflater: Inflater, source: AsyncIterator[bytes]) -> tuple[bytes, bytes]:
    async def passed() -> bytes:
        return b"".join([c async for c in inflater.tee(source)])

    async def inflated() -> bytes:
        return b"".join([c async for c in inflater.inflated()])

    a, b = await asyncio.gather(passed(), inflated())
    return a, b


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
async def test_the_stream_passes_as_it_is_and_comes_out_inflated(size: int) -> None:
    plain = os.urandom(3000) + b"x" * 50000
    # Two gzip members back to back (what pigz and concatenation make).
    gz = gzip.compress(plain[:20000], mtime=0) + gzip.compress(plain[20000:], mtime=0)
    passed, inflated = await _run(Inflater(Turns(), 0), _chunks(gz, size))
    assert passed == gz
    assert inflated == plain


async def test_a_cut_short_or_broken_gzip_fails_both_sides() -> None:
    gz = gzip.compress(os.urandom(5000), mtime=0)
    with pytest.raises(ImagePullError, match="cut short"):
        await _run(Inflater(Turns(), 0), _chunks(gz[:-100], 512))
    with pytest.raises(ImagePullError, match="not valid gzip"):
        await _run(Inflater(Turns(), 0), _chunks(b"\x1f\x8b\x08\x00" + b"\xff" * 64, 16))


async def test_the_lowest_layer_waiting_goes_first() -> None:
    turns = Turns()
    order: list[int] = []

    async def worker(index: int) -> None:
        async with turns.turn(index):
            order.append(index)
            await asyncio.sleep(0.01)

    async with turns.turn(9):  # busy: the others queue up in any order
        tasks = [asyncio.ensure_future(worker(i)) for i in (5, 2, 7, 1)]
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [1, 2, 5, 7]
