"""OrderTurns forgets an order once no change of it runs, however the changes ended."""

from __future__ import annotations

import asyncio

import pytest

from services.orders.turns import OrderTurns
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio


async def test_a_waiter_cancelled_and_a_holder_that_raised_leave_no_memory_behind() -> None:
    turns = OrderTurns()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with turns.turn("ord_1"):
            holding.set()
            await release.wait()
            raise RuntimeError("the change failed")

    async def waiter() -> None:
        async with turns.turn("ord_1"):
            raise AssertionError("never reached: cancelled while waiting")

    first = asyncio.create_task(holder())
    await holding.wait()
    second = asyncio.create_task(waiter())
    # Counted before it waits for the lock, in the same step: seen, it is waiting.
    await wait_for(lambda: turns._orders["ord_1"].changes == 2, message="never waited")
    second.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await second
    with pytest.raises(RuntimeError):
        await first
    assert len(turns) == 0
