"""PollingLoop: a wake-up that arrives during a pass is kept; a failing pass is retried."""

from __future__ import annotations

import asyncio

import pytest

from shared.retry import RetryPolicy
from shared.runtime import PollingLoop

QUICK = RetryPolicy(max_attempts=3, first_backoff=0.001, max_backoff=0.001)


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

    loop = PollingLoop("test", one_pass, transient=())
    await asyncio.wait_for(loop.run(), 5)
    assert passes == 2


async def test_a_transient_failure_is_retried_without_limit_and_stop_ends_a_nap() -> None:
    passes = 0
    last_pass_done = asyncio.Event()

    async def one_pass() -> float:
        nonlocal passes
        passes += 1
        if passes < 20:
            raise OSError("database unreachable")
        last_pass_done.set()
        return 3600.0

    loop = PollingLoop("test", one_pass, transient=(OSError,), retry=QUICK)
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(last_pass_done.wait(), 5)
    loop.stop()  # ends the hour-long nap at once
    await asyncio.wait_for(running, 5)
    assert passes == 20


async def test_any_other_failure_ends_the_loop_after_the_last_attempt() -> None:
    passes = 0

    async def one_pass() -> float:
        nonlocal passes
        passes += 1
        raise ValueError("a bug, not an outage")

    loop = PollingLoop("test", one_pass, transient=(OSError,), retry=QUICK)
    with pytest.raises(ValueError, match="a bug"):
        await asyncio.wait_for(loop.run(), 5)
    assert passes == QUICK.max_attempts
