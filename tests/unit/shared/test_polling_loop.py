"""PollingLoop: a wake-up that arrives during a pass is kept; a failing pass is retried."""

from __future__ import annotations

import asyncio

from shared.retry import RetryPolicy
from shared.runtime import PollingLoop


async def test_a_wake_up_during_a_pass_starts_the_next_pass_at_once() -> None:
    passes = 0
    loop: PollingLoop

    async def one_pass() -> float:
        nonlocal passes
        passes += 1
        if passes == 1:
            loop.wake()  # e.g. a NOTIFY for a row committed after this pass looked
        else:
            loop.stop()
        return 3600.0

    loop = PollingLoop("test", one_pass)
    await asyncio.wait_for(loop.run(), 5)
    assert passes == 2


async def test_a_failing_pass_is_retried_after_backoff_and_stop_ends_a_nap() -> None:
    passes = 0
    third_pass_done = asyncio.Event()

    async def one_pass() -> float:
        nonlocal passes
        passes += 1
        if passes < 3:
            raise OSError("database unreachable")
        third_pass_done.set()
        return 3600.0

    loop = PollingLoop("test", one_pass, retry=RetryPolicy(first_backoff=0.01, max_backoff=0.01))
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(third_pass_done.wait(), 5)
    loop.stop()  # ends the hour-long nap at once
    await asyncio.wait_for(running, 5)
    assert passes == 3
