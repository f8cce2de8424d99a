"""The pool hands a connection on with no reset query: what a request left must not follow it.

``shared.db`` skips asyncpg's reset query (one round trip a request) and relies
on asyncpg still rolling back an open transaction on release.  A request cut
short inside its unit of work (a cancellation: shutdown, a timeout) is the
case that leaves one open.
"""

from __future__ import annotations

import asyncio

import pytest

from shared import db


async def test_a_unit_of_work_cancelled_midway_leaves_nothing_on_its_connection(
    fresh_database: str,
) -> None:
    pool = await db.create_pool(fresh_database, min_size=1, max_size=1)
    try:
        await pool.execute("CREATE TABLE probe (id text PRIMARY KEY)")
        inside = asyncio.Event()

        async def cut_short() -> None:
            async with db.unit_of_work(pool) as conn:
                await conn.execute("INSERT INTO probe VALUES ('half')")
                await conn.execute("SELECT pg_advisory_xact_lock(1)")
                inside.set()
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(cut_short())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The pool's only connection: the one the cancelled unit of work had.
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM probe") == 0
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
                " AND locktype = 'advisory'"
            )
            assert held == 0
            await conn.execute("INSERT INTO probe VALUES ('whole')")
        assert await pool.fetchval("SELECT count(*) FROM probe") == 1
    finally:
        await pool.close()
