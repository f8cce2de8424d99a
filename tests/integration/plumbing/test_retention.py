"""Pruning: sent outbox rows and opted-in consumers' dedupe rows go after their retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from shared import db, retention
from shared.outbox import append
from tests.support.events import TEST_PRODUCER, Ping, ping_topic
from tests.support.plans import indexes_used, plans_as_prepared, recorded_query, rows_touched

TOPIC = ping_topic("pruned")


async def test_only_rows_sent_before_the_retention_are_pruned(pool: db.Pool) -> None:
    async with db.unit_of_work(pool) as conn:
        recorded = [
            await append(conn, TOPIC, Ping(n=n), key="k", producer=TEST_PRODUCER) for n in range(7)
        ]
    ids = [envelope.event_id for envelope in recorded]
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE outbox SET published_at = $2 WHERE event_id = ANY($1::text[])",
            ids[:5],
            now - timedelta(days=8),
        )
        await conn.execute(
            "UPDATE outbox SET published_at = $2 WHERE event_id = $1",
            ids[5],
            now - timedelta(hours=1),
        )
        # ids[6] is unsent, however old: never pruned.
        await conn.execute(
            "UPDATE outbox SET created_at = $2 WHERE event_id = $1",
            ids[6],
            now - timedelta(days=30),
        )
        pruned = await retention.prune_sent_events(
            conn, sent_before=now - timedelta(days=7), batch_size=2
        )
    assert pruned == 5
    left = await pool.fetch("SELECT event_id FROM outbox ORDER BY id")
    assert [row["event_id"] for row in left] == ids[5:]


async def test_only_opted_in_consumers_lose_their_old_dedupe_rows(pool: db.Pool) -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=20), now - timedelta(days=1)
    rows = [
        ("usage-meter", "evt-1", old),
        ("usage-meter", "evt-2", old),
        ("usage-meter", "evt-3", recent),
        ("ledger", "evt-1", old),
    ]
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3)",
            rows,
        )
        pruned = await retention.prune_processed_events(
            conn, consumers=["usage-meter"], processed_before=now - timedelta(days=14), batch_size=1
        )
    assert pruned == 2
    left = await pool.fetch("SELECT consumer, event_id FROM processed_events ORDER BY 1, 2")
    assert [(row["consumer"], row["event_id"]) for row in left] == [
        ("ledger", "evt-1"),
        ("usage-meter", "evt-3"),
    ]


async def test_pruning_dedupe_rows_reads_only_the_old_ones(plumbing_db: str) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=20)
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(plumbing_db)
    try:
        # Three old rows behind many recent ones, of the pruned consumer and another.
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, processed_at)"
            " SELECT c, 'evt-' || i, CASE WHEN i <= 3 THEN $1::timestamptz ELSE $2 END"
            " FROM generate_series(1, 5000) i, unnest(ARRAY['usage-meter', 'ledger']) c",
            old,
            now - timedelta(days=1),
        )
        await conn.execute("ANALYZE processed_events")
        pruned, sql, args = await recorded_query(
            conn,
            lambda c: retention.prune_processed_events(
                c, consumers=["usage-meter"], processed_before=now - timedelta(days=14)
            ),
        )
        assert pruned == 3
        assert await conn.fetchval("SELECT count(*) FROM processed_events") == 2 * 5000 - 3
        # Old again, for the plans below (each rolled back) to find something to prune.
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, processed_at)"
            " SELECT 'usage-meter', 'evt-' || i, $1 FROM generate_series(1, 3) i",
            old,
        )
        for plan in await plans_as_prepared(conn, sql, args):
            assert "processed_events_processed_at" in indexes_used(plan), plan
            assert rows_touched(plan, "processed_events") <= 3 * 3, plan
    finally:
        await conn.close()
