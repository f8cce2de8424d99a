"""Catalog migrations upgrade a database that already holds entities and their events."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from services.catalog.__main__ import MIGRATIONS
from shared.migrations import PLUMBING_MIGRATIONS, migrate


async def test_entities_with_earlier_events_continue_their_numbering_after_the_upgrade(
    fresh_database: str, tmp_path: Path
) -> None:
    before_numbering = tmp_path / "catalog"
    before_numbering.mkdir()
    for name in ("0001_catalog.sql", "0002_agreement_expiry_timers.sql"):
        shutil.copy(MIGRATIONS / name, before_numbering / name)
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS), ("catalog", before_numbering)])
        await conn.execute(
            "INSERT INTO partners (id, name, kind)"
            " VALUES ('ptn_a', 'A', 'isv'), ('ptn_b', 'B', 'isv');"
            "INSERT INTO customers (id, name, email, email_key)"
            " VALUES ('cus_a', 'C', 'c@example.com', 'c@example.com');"
            "INSERT INTO outbox (event_id, topic, key, event_type, payload) VALUES"
            " ('evt_1', 'catalog.accounts', 'ptn_a', 'catalog.partner.registered', ''),"
            " ('evt_2', 'catalog.accounts', 'ptn_a', 'catalog.partner.token_rotated', ''),"
            " ('evt_3', 'catalog.accounts', 'cus_a', 'catalog.customer.registered', '')"
        )
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS), ("catalog", MIGRATIONS)])
        rows = await conn.fetch(
            "SELECT id, event_sequence FROM partners UNION ALL"
            " SELECT id, event_sequence FROM customers ORDER BY id"
        )
    finally:
        await conn.close()
    assert {row["id"]: row["event_sequence"] for row in rows} == {
        "cus_a": 1,
        "ptn_a": 2,
        "ptn_b": 0,
    }
