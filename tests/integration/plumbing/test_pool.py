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
from shared.listening import Listener


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


async def test_a_listeners_connection_goes_back_listening_to_nothing(fresh_database: str) -> None:
    # A LISTEN that the server ran but whose call was cut short is unknown to
    # asyncpg; a stray LISTEN on the pool's only connection stands in for it.
    pool = await db.create_pool(fresh_database, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("LISTEN stray")
        listener = Listener(pool, "invalidations", lambda _payload: None, probe_seconds=0.05)
        running = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.listening.wait(), timeout=10)
        listener.stop()
        await asyncio.wait_for(running, timeout=10)
        async with pool.acquire() as conn:
            assert await conn.fetch("SELECT pg_listening_channels()") == []
    finally:
        await pool.close()
