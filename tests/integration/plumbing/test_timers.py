"""Durable timers: each fires once, with two replicas, across a crash, despite a failing one.

The loops decide "due" by a clock the test moves; only the crash test runs a
real process on the real clock, with timers that were due before it started.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shared import db, timers
from shared.retry import RetryPolicy
from shared.timers import TimerLoop
from tests.support.clock import MovableClock
from tests.support.processes import Processes
from tests.support.timer_process import TIMER_TABLES, marking_handler
from tests.support.waiting import wait_for

KIND = "test.mark"


@pytest.fixture
async def timer_pool(pool: db.Pool) -> db.Pool:
    async with pool.acquire() as conn:
        await conn.execute(TIMER_TABLES)
    return pool


async def fired(pool: db.Pool) -> Counter[str]:
    rows = await pool.fetch("SELECT key FROM timer_effects")
    return Counter(row["key"] for row in rows)


async def pending(pool: db.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM timers")
    return count


async def schedule_all(pool: db.Pool, keys: list[str], clock: MovableClock) -> None:
    async with db.unit_of_work(pool) as conn:
        for n, key in enumerate(keys):
            await timers.schedule(
                conn, kind=KIND, key=key, due_at=clock.now + timedelta(minutes=1, milliseconds=n)
            )


async def test_a_timer_fires_once_when_due_and_not_before(timer_pool: db.Pool) -> None:
    clock = MovableClock()
    loop = TimerLoop(timer_pool, {KIND: marking_handler("one")}, clock=clock)
    await schedule_all(timer_pool, ["a", "b"], clock)

    assert await loop.fire_due() == 0
    clock.advance(timedelta(seconds=59))
    assert await loop.fire_due() == 0
    clock.advance(timedelta(seconds=1, milliseconds=0))
    assert await loop.fire_due() == 1
    assert await fired(timer_pool) == Counter({"a": 1})
    clock.advance(timedelta(hours=1))
    assert await loop.fire_due() == 1
    assert await loop.fire_due() == 0
    assert await fired(timer_pool) == Counter({"a": 1, "b": 1})
    assert await pending(timer_pool) == 0


async def test_scheduling_again_moves_the_deadline_and_cancel_forgets_it(
    timer_pool: db.Pool,
) -> None:
    clock = MovableClock()
    loop = TimerLoop(timer_pool, {KIND: marking_handler("one")}, clock=clock)
    async with db.unit_of_work(timer_pool) as conn:
        await timers.schedule(conn, kind=KIND, key="moved", due_at=clock.now)
        await timers.schedule(conn, kind=KIND, key="moved", due_at=clock.now + timedelta(hours=1))
        await timers.schedule(conn, kind=KIND, key="cancelled", due_at=clock.now)
    async with db.unit_of_work(timer_pool) as conn:
        await timers.cancel(conn, kind=KIND, key="cancelled")

    assert await loop.fire_due() == 0
    clock.advance(timedelta(hours=1))
    assert await loop.fire_due() == 1
    assert await fired(timer_pool) == Counter({"moved": 1})


async def test_a_rolled_back_schedule_leaves_no_timer(timer_pool: db.Pool) -> None:
    clock = MovableClock()
    async with timer_pool.acquire() as conn:
        decision = conn.transaction()
        await decision.start()
        await timers.schedule(conn, kind=KIND, key="never", due_at=clock.now)
        await decision.rollback()
    assert await pending(timer_pool) == 0


async def test_two_replicas_fire_every_timer_exactly_once(
    timer_pool: db.Pool, plumbing_db: str
) -> None:
    keys = [f"k{n}" for n in range(200)]
    clock = MovableClock()
    await schedule_all(timer_pool, keys, clock)

    async def slow_mark(replica: str) -> timers.TimerHandler:
        mark = marking_handler(replica)

        async def handler(conn: db.Connection, key: str) -> None:
            await mark(conn, key)
            # Long enough that both replicas are at work at the same time.
            await conn.execute("SELECT pg_sleep(0.002)")

        return handler

    second_pool = await db.create_pool(plumbing_db, min_size=1, max_size=3)
    replicas = [
        TimerLoop(timer_pool, {KIND: await slow_mark("one")}, clock=clock, poll_seconds=0.02),
        TimerLoop(second_pool, {KIND: await slow_mark("two")}, clock=clock, poll_seconds=0.02),
    ]
    running = [asyncio.create_task(replica.run()) for replica in replicas]
    try:
        # Not due yet: both replicas poll and fire nothing.
        await wait_for(lambda: all(not task.done() for task in running), message="a loop died")
        assert await fired(timer_pool) == Counter()
        clock.advance(timedelta(minutes=2))

        async def all_fired() -> bool:
            return await pending(timer_pool) == 0

        await wait_for(all_fired, message="the replicas did not fire every timer")
    finally:
        for replica in replicas:
            replica.stop()
        await asyncio.wait_for(asyncio.gather(*running), 10)
        await second_pool.close()

    assert await fired(timer_pool) == Counter(dict.fromkeys(keys, 1))
    by_replica = Counter(
        row["fired_by"] for row in await timer_pool.fetch("SELECT fired_by FROM timer_effects")
    )
    assert set(by_replica) == {"one", "two"}, f"the replicas did not share the work: {by_replica}"


async def test_a_replica_killed_mid_handler_loses_no_timer_and_fires_none_twice(
    timer_pool: db.Pool, plumbing_db: str, processes: Processes
) -> None:
    clock = MovableClock()
    keys = [f"k{n}" for n in range(10)]
    await schedule_all(timer_pool, keys, clock)
    # Due by the real clock of the replica processes.
    await timer_pool.execute("UPDATE timers SET next_attempt_at = next_attempt_at - interval '1h'")
    await timer_pool.execute("INSERT INTO timer_gate (key) VALUES ('k0')")

    gate: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(plumbing_db)
    try:
        holding = gate.transaction()
        await holding.start()
        await gate.execute("SELECT key FROM timer_gate WHERE key = 'k0' FOR UPDATE")
        first = processes.start("tests.support.timer_process", plumbing_db, "first")

        async def handler_blocked() -> bool:
            waiting: int = await timer_pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%timer_gate%'"
            )
            return waiting == 1

        await wait_for(handler_blocked, message="the first replica never reached the gate")
        await first.kill()
        await holding.rollback()
    finally:
        await gate.close()

    second = processes.start("tests.support.timer_process", plumbing_db, "second")

    async def all_fired() -> bool:
        return await pending(timer_pool) == 0

    await wait_for(all_fired, message="the restarted replica did not fire every timer")
    assert await second.terminate() == 0
    assert await fired(timer_pool) == Counter(dict.fromkeys(keys, 1))
    fired_by = {
        row["fired_by"] for row in await timer_pool.fetch("SELECT fired_by FROM timer_effects")
    }
    assert fired_by == {"second"}


async def test_a_failing_timer_is_retried_with_backoff_then_parked_and_blocks_no_other(
    timer_pool: db.Pool,
) -> None:
    clock = MovableClock()
    mark = marking_handler("one")
    failures: Counter[str] = Counter()

    async def handler(conn: db.Connection, key: str) -> None:
        await mark(conn, key)  # rolled back with the failure: must never show
        if key == "poison" or (key == "flaky" and failures["flaky"] < 2):
            failures[key] += 1
            raise ValueError(f"cannot handle {key}")

    retry = RetryPolicy(max_attempts=3, first_backoff=10.0, max_backoff=60.0)
    loop = TimerLoop(timer_pool, {KIND: handler}, clock=clock, retry=retry)
    await schedule_all(timer_pool, ["poison", "flaky", "fine"], clock)
    clock.advance(timedelta(minutes=2))

    assert await loop.fire_due() == 1  # poison and flaky failed, fine fired
    assert await fired(timer_pool) == Counter({"fine": 1})
    # Not retried before its backoff has passed.
    assert await loop.fire_due() == 0
    assert failures == Counter({"poison": 1, "flaky": 1})

    clock.advance(timedelta(seconds=10))  # the first backoff is at most 10 s
    assert await loop.fire_due() == 0
    assert failures == Counter({"poison": 2, "flaky": 2})
    clock.advance(timedelta(seconds=20))  # the second at most 20 s
    assert await loop.fire_due() == 1  # flaky's third attempt succeeds
    assert failures == Counter({"poison": 3, "flaky": 2})

    clock.advance(timedelta(days=1))
    assert await loop.fire_due() == 0
    assert failures["poison"] == 3, "a parked timer was tried again"
    parked = await timer_pool.fetchrow(
        "SELECT attempts, parked_at, last_error FROM timers WHERE key = 'poison'"
    )
    assert parked is not None
    assert parked["attempts"] == 3
    assert parked["parked_at"] is not None
    assert "cannot handle poison" in parked["last_error"]
    assert await fired(timer_pool) == Counter({"fine": 1, "flaky": 1})


async def test_a_loop_fires_only_the_kinds_it_handles(timer_pool: db.Pool) -> None:
    clock = MovableClock()
    async with db.unit_of_work(timer_pool) as conn:
        await timers.schedule(conn, kind="someone.else", key="x", due_at=clock.now)
    loop = TimerLoop(timer_pool, {KIND: marking_handler("one")}, clock=clock)
    assert await loop.fire_due() == 0
    assert await pending(timer_pool) == 1


async def test_due_timers_of_an_unhandled_kind_are_reported_and_block_nothing(
    timer_pool: db.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = MovableClock()
    orphan = f"orphaned.{uuid.uuid4().hex[:8]}"
    async with db.unit_of_work(timer_pool) as conn:
        # Due before the handled timer, so a loop stuck on it would never reach the other.
        for key in ("x", "y"):
            await timers.schedule(conn, kind=orphan, key=key, due_at=clock.now)
        await timers.schedule(
            conn, kind=KIND, key="handled", due_at=clock.now + timedelta(seconds=1)
        )
    loop = TimerLoop(
        timer_pool, {KIND: marking_handler("one")}, clock=clock, unhandled_check_seconds=0
    )
    clock.advance(timedelta(seconds=2))
    with caplog.at_level(logging.WARNING, logger="shared.timers"):
        assert await loop.fire_due() == 1
        assert await loop.fire_due() == 0
    assert await fired(timer_pool) == Counter({"handled": 1})
    warnings = [r for r in caplog.records if getattr(r, "timer_kind", None) == orphan]
    assert len(warnings) == 1, warnings  # once per kind, not once per pass
    assert warnings[0].levelno == logging.WARNING
    assert REGISTRY.get_sample_value("timers_due_unhandled", {"kind": orphan}) == 2

    async with db.unit_of_work(timer_pool) as conn:
        await timers.cancel(conn, kind=orphan, key="x")
        await timers.cancel(conn, kind=orphan, key="y")
    await loop.fire_due()
    assert REGISTRY.get_sample_value("timers_due_unhandled", {"kind": orphan}) == 0
