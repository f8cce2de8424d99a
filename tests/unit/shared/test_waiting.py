"""The harness's own ``wait_for``: it returns the first truthy value or fails with the message."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import wait_for


async def test_a_sync_condition_returns_its_first_truthy_value() -> None:
    counter = itertools.count()
    assert await wait_for(lambda: next(counter) >= 3 and "done", interval=0, message="x") == "done"


async def test_an_async_condition_is_awaited() -> None:
    calls = 0

    async def third_time() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else None

    assert await wait_for(third_time, interval=0, message="x") == 3


async def test_a_timeout_fails_with_the_message_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"nothing came \(not within 0.05s; last value 0\)"):
        await wait_for(lambda: 0, timeout=0.05, interval=0.01, message="nothing came")


async def test_only_the_listed_exceptions_count_as_not_yet() -> None:
    attempts = iter([ConnectionError("refused"), ConnectionError("refused"), "up"])

    def refuse() -> None:
        raise ConnectionError("refused")

    def probe() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, str)
        return outcome

    assert await wait_for(probe, interval=0, ignore=(ConnectionError,), message="x") == "up"
    with pytest.raises(ZeroDivisionError):
        await wait_for(lambda: 1 // 0, interval=0, ignore=(ConnectionError,), message="x")
    with pytest.raises(AssertionError, match="raised ConnectionError"):
        await wait_for(refuse, timeout=0.02, ignore=(ConnectionError,), message="down")
