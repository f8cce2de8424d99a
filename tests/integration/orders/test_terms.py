"""The orderable terms remembered in a process never hide a change the catalog copy made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import msgspec
import pytest

from services.orders import handlers, store
from services.orders.terms import OrderableTerms
from shared import db
from shared.contracts.catalog_offerings import OfferingRetired, OfferingState
from tests.integration.orders.test_usage import OFFERING
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

PUBLISHED = OfferingState(
    offering_id=OFFERING.offering_id,
    owner_id=OFFERING.owner_id,
    version=OFFERING.version,
    status="published",
    orderable=True,
    name="Storage",
    description="terms test",
    currency=OFFERING.currency,
    components=list(OFFERING.components),
    published_at=datetime(2026, 1, 1, tzinfo=UTC),
    changed_at=datetime(2026, 1, 1, tzinfo=UTC),
)
RETIRED = msgspec.structs.replace(
    PUBLISHED, status="retired", changed_at=datetime(2026, 1, 2, tzinfo=UTC)
)
IDS = [OFFERING.offering_id]


@pytest.fixture
async def pool(migrated_orders_db: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(migrated_orders_db, min_size=1, max_size=6)
    async with db.unit_of_work(created) as conn:
        await store.record_offering(conn, PUBLISHED)
    yield created
    await created.close()


@asynccontextmanager
async def listening(terms: OrderableTerms) -> AsyncIterator[OrderableTerms]:
    running = asyncio.create_task(terms.run())
    try:
        await wait_for(terms.listener.listening.is_set, message="the listener never started")
        yield terms
    finally:
        terms.stop()
        await running


async def status_read(terms: OrderableTerms, pool: db.Pool) -> str:
    async with pool.acquire() as conn:
        offerings, _ = await terms.read(conn, IDS)
    return offerings[OFFERING.offering_id].status


async def retire(pool: db.Pool, terms: OrderableTerms) -> None:
    """What the catalog copy does with a retirement: tell ``terms``, then write."""
    async with db.unit_of_work(pool) as conn:
        await terms.changing(conn)
        await handlers.apply_catalog_event(conn, OfferingRetired(offering=RETIRED))


async def test_a_change_here_is_seen_by_the_next_read_after_its_commit(pool: db.Pool) -> None:
    async with listening(OrderableTerms(pool, ttl_seconds=3600)) as terms:
        assert await status_read(terms, pool) == "published"
        async with pool.acquire() as conn:
            # Remembered: the row is gone, the answer is not.
            await conn.execute("DELETE FROM offering_versions")
            assert (await terms.read(conn, IDS))[0][OFFERING.offering_id].status == "published"
            await store.record_offering(conn, PUBLISHED)
        await retire(pool, terms)
        # At once, without waiting for the notification: the change is this process's own.
        assert await status_read(terms, pool) == "retired"


async def test_a_change_in_another_replica_reaches_this_ones_memory(pool: db.Pool) -> None:
    async with (
        listening(OrderableTerms(pool, ttl_seconds=3600)) as here,
        listening(OrderableTerms(pool, ttl_seconds=3600)) as elsewhere,
    ):
        assert await status_read(here, pool) == "published"
        await retire(pool, elsewhere)

        async def retired() -> bool:
            return await status_read(here, pool) == "retired"

        # The TTL is an hour: only the notification can tell this replica.
        await wait_for(retired, timeout=10, message="the retired offering stayed orderable")


async def test_a_read_racing_a_change_remembers_nothing(pool: db.Pool) -> None:
    async with listening(OrderableTerms(pool, ttl_seconds=3600)) as terms, pool.acquire() as lock:
        async with lock.transaction():
            # The read waits on this lock while a change commits and is announced.
            await lock.execute("LOCK TABLE offering_versions IN ACCESS EXCLUSIVE MODE")
            reading = asyncio.create_task(status_read(terms, pool))

            async def read_waits() -> bool:
                # Not on ``lock``: inside a transaction pg_stat_activity stays as first read.
                waiting = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FROM offering_versions%' AND datname = current_database()"
                )
                return bool(waiting)

            await wait_for(read_waits, message="the read never waited on the lock")
            async with db.unit_of_work(pool) as changer:
                await terms.changing(changer)
        assert await reading == "published"
        # What the read would have remembered is stale now: it must have remembered nothing.
        async with pool.acquire() as conn:
            await store.record_offering(conn, RETIRED)
        assert await status_read(terms, pool) == "retired"


async def test_nothing_is_remembered_while_not_listening(pool: db.Pool) -> None:
    terms = OrderableTerms(pool, ttl_seconds=3600)
    assert await status_read(terms, pool) == "published"
    async with db.unit_of_work(pool) as conn:
        await handlers.apply_catalog_event(conn, OfferingRetired(offering=RETIRED))
    # No notification could have reached it, so it must not have kept the old answer.
    assert await status_read(terms, pool) == "retired"
