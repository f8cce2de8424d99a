"""Listing an owner's orders reads that owner's orders, not every order there is.

The test records the query ``store.list_order_ids`` sends, runs it again
under ``EXPLAIN ANALYZE`` on a table where the owner's few orders are the
oldest of many, and counts the rows of ``orders`` the plan touched.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg
import msgspec
import pytest

from services.orders import store
from shared.db import Connection

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWNER = "prt_smallowner"
OTHERS = 3000


class Recording:
    """Passes ``fetch`` through to a real connection and keeps what was asked."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self.conn = conn
        self.asked: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.asked.append((sql, args))
        return await self.conn.fetch(sql, *args)


def rows_touched(plan: dict[str, Any], relation: str) -> int:
    own = 0
    if plan.get("Relation Name") == relation:
        loops = plan.get("Actual Loops", 1)
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * loops
    return own + sum(rows_touched(child, relation) for child in plan.get("Plans", []))


async def seed(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # The owner's orders are the oldest: newest-first, every other order comes before them.
    await conn.execute(
        "INSERT INTO orders (id, customer_id, status, currency, total, placed_at, accept_by,"
        " changed_at, sequence) SELECT 'ord_' || lpad(i::text, 8, '0'), 'cus_' || (i % 97),"
        " 'pending', 'USD', 1, now(), now(), now(), 1 FROM generate_series(1, $1) i",
        OTHERS + 3,
    )
    await conn.execute(
        "INSERT INTO order_lines (id, order_id, position, offering_id, offering_version,"
        " owner_id, quantity, amount, components) SELECT 'lin_' || i,"
        " 'ord_' || lpad(i::text, 8, '0'), 0, 'off_x', 1,"
        " CASE WHEN i <= 3 THEN $2 ELSE 'prt_big' END, 1, 1, '[]'"
        " FROM generate_series(1, $1) i",
        OTHERS + 3,
        OWNER,
    )
    await conn.execute("ANALYZE orders; ANALYZE order_lines")


async def test_an_owners_list_reads_only_that_owners_orders(migrated_orders_db: str) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        await seed(conn)
        recording = Recording(conn)
        found = await store.list_order_ids(
            cast(Connection, recording),
            customer_id=None,
            owner_id=OWNER,
            status=None,
            after_id=None,
            limit=51,
        )
        assert found == ["ord_00000003", "ord_00000002", "ord_00000001"]
        [(sql, args)] = recording.asked
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        plan = msgspec.json.decode(explained)[0]["Plan"]
        assert rows_touched(plan, "orders") <= 3 * 2, plan
    finally:
        await conn.close()
