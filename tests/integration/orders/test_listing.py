"""Listing a customer's or an owner's orders reads theirs, not every order there is.

The tests record the query the store sends, run it again under ``EXPLAIN
ANALYZE`` on a table where the customer's or owner's few orders are the
oldest of many, and count the rows the plan touched and the index it used.
asyncpg prepares every statement, and after five executions PostgreSQL may
settle on a generic plan that knows no parameter values; so each query is
also prepared, executed more than five times and explained as PostgreSQL then
runs it, and once more with the generic plan forced.
"""

from __future__ import annotations

import asyncpg
import pytest

from services.orders import store
from shared.contracts.orders import OrderStatus
from tests.support.plans import indexes_used, plans_as_prepared, recorded_query, rows_touched

pytestmark = pytest.mark.asyncio(loop_scope="session")

OWNER = "prt_smallowner"
CUSTOMER = "cus_smallcustomer"
OTHERS = 3000


async def seed(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # The owner's orders are the oldest: newest-first, every other order comes before them.
    await conn.execute(
        "INSERT INTO orders (id, customer_id, status, currency, total, placed_at, accept_by,"
        " changed_at, sequence) SELECT 'ord_' || lpad(i::text, 8, '0'),"
        " CASE WHEN i <= 3 THEN $2 ELSE 'cus_' || (i % 97) END,"
        " CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'confirmed' END,"
        " 'USD', 1, now(), now(), now(), 1 FROM generate_series(1, $1) i",
        OTHERS + 3,
        CUSTOMER,
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


LISTED = ["ord_00000003", "ord_00000002", "ord_00000001"]


@pytest.mark.parametrize("status", [None, "confirmed"])
@pytest.mark.parametrize("after_id", [None, "ord_00000004"])
async def test_an_owners_list_reads_only_that_owners_orders(
    migrated_orders_db: str, status: OrderStatus | None, after_id: str | None
) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        await seed(conn)
        found, sql, args = await recorded_query(
            conn,
            lambda c: store.owner_order_ids(c, OWNER, status=status, after_id=after_id, limit=51),
        )
        assert found == [o for o in LISTED if status is None or o != "ord_00000002"]
        for plan in await plans_as_prepared(conn, sql, args):
            assert "order_lines_by_owner" in indexes_used(plan), plan
            assert rows_touched(plan, "orders") <= 3 * 2, plan
    finally:
        await conn.close()


@pytest.mark.parametrize("status", [None, "confirmed"])
@pytest.mark.parametrize("after_id", [None, "ord_00000004"])
async def test_a_customers_list_reads_only_that_customers_orders(
    migrated_orders_db: str, status: OrderStatus | None, after_id: str | None
) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        await seed(conn)
        found, sql, args = await recorded_query(
            conn,
            lambda c: store.customer_order_ids(
                c, CUSTOMER, status=status, after_id=after_id, limit=51
            ),
        )
        assert found == [o for o in LISTED if status is None or o != "ord_00000002"]
        for plan in await plans_as_prepared(conn, sql, args):
            assert "orders_by_customer" in indexes_used(plan), plan
            assert rows_touched(plan, "orders") <= 3 * 2, plan
    finally:
        await conn.close()


PARTNER = "prt_busy"


async def seed_fulfillments(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # The busy partner is asked for every order, and its three accepted fulfilments
    # are its oldest; fifty other partners share the orders too.
    await seed(conn)
    await conn.execute(
        "INSERT INTO fulfillments (id, order_id, partner_id, role, status, changed_at)"
        " SELECT 'ful_' || lpad(i::text, 8, '0'), 'ord_' || lpad(i::text, 8, '0'), $2,"
        " 'reseller', CASE WHEN i <= 3 THEN 'accepted' ELSE 'requested' END, now()"
        " FROM generate_series(1, $1) i"
        " UNION ALL SELECT 'ful_x' || i, 'ord_' || lpad(i::text, 8, '0'), 'prt_' || (i % 50),"
        " 'isv', CASE WHEN i % 3 = 0 THEN 'accepted' ELSE 'requested' END, now()"
        " FROM generate_series(1, $1) i",
        OTHERS + 3,
        PARTNER,
    )
    await conn.execute("ANALYZE fulfillments")


@pytest.mark.parametrize("after_id", [None, "ful_00003000"])
async def test_a_partners_fulfillments_of_one_status_read_only_those(
    migrated_orders_db: str, after_id: str | None
) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        await seed_fulfillments(conn)
        found, sql, args = await recorded_query(
            conn,
            lambda c: store.partner_fulfillment_ids(
                c, PARTNER, status="accepted", after_id=after_id, limit=51
            ),
        )
        assert [f for f, _ in found] == ["ful_00000003", "ful_00000002", "ful_00000001"]
        for plan in await plans_as_prepared(conn, sql, args):
            assert "fulfillments_by_partner_status" in indexes_used(plan), plan
            assert rows_touched(plan, "fulfillments") <= 3 * 2, plan
    finally:
        await conn.close()
