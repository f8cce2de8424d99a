"""Usage reports on real PostgreSQL: each usage id charged once, each report cheap.

Two transactions side by side report one usage id for two orders: the
second finds nothing counted (the first has not committed), then waits on
the first's row of ``usage_records``.  When it stops waiting, the row it
meant to insert already exists; it must record nothing either.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from services.orders import domain, handlers, store
from services.orders.domain import Accept, OfferingVersion, ReportUsage, RequestedLine
from services.orders.turns import OrderTurns
from shared import outbox
from shared.contracts import orders as o_events
from shared.contracts.catalog_offerings import ComponentState
from shared.contracts.envelope import EventRegistry, decode_envelope
from shared.contracts.pricing import UsagePricing
from shared.db import Connection
from shared.errors import Conflict
from shared.ids import new_id
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime.now(UTC)
ISV = "prt_isvusagerace"
OFFERING = OfferingVersion(
    offering_id="off_usagerace",
    version=1,
    owner_id=ISV,
    status="published",
    orderable=True,
    currency="USD",
    components=(
        ComponentState(
            partner_id=ISV,
            partner_kind="isv",
            role="isv",
            name="Storage",
            pricing=UsagePricing(unit_amount=3, unit="GB-hour"),
            agreement_id=None,
            share_bps=10_000,
        ),
    ),
)


async def confirmed_order(conn: asyncpg.Connection[asyncpg.Record]) -> str:
    placed = domain.price_order(
        order_id=new_id("ord"),
        customer_id="cus_usagerace",
        requested=[RequestedLine(OFFERING.offering_id, 1)],
        offerings={OFFERING.offering_id: OFFERING},
        agreements={},
        now=NOW - timedelta(hours=1),
        acceptance_window=timedelta(hours=48),
        new_id=new_id,
    )
    confirmed = domain.decide(placed.order, Accept(ISV), NOW - timedelta(hours=1))
    await store.insert_order(
        conn,
        confirmed.order,
        outbox.batch([], producer=handlers.PRODUCER),
        deadline_kind=handlers.ACCEPTANCE_DEADLINE,
    )
    return confirmed.order.order_id


async def test_one_usage_id_reported_for_two_orders_at_once_is_charged_once(
    migrated_orders_db: str,
) -> None:
    first: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    second: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        one, two = await confirmed_order(first), await confirmed_order(first)
        report = ReportUsage(
            usage_id="u-1", partner_id=ISV, component_partner_id=None, quantity=10, occurred_at=NOW
        )
        first_tx = first.transaction()
        await first_tx.start()
        await handlers.report_usage(first, one, report, NOW)

        async def report_second() -> None:
            async with second.transaction():
                await handlers.report_usage(second, two, report, NOW)

        racing = asyncio.create_task(report_second())
        second_pid = second.get_server_pid()

        async def second_waits_on_the_first() -> bool:
            blockers = await first.fetchval("SELECT pg_blocking_pids($1)", second_pid)
            return first.get_server_pid() in blockers

        try:
            await wait_for(second_waits_on_the_first, message="the second report never waited")
        finally:
            await first_tx.commit()
        # The loser learns the usage id is counted for another order (409).
        with pytest.raises(Conflict):
            await racing

        recorded = await first.fetch(
            "SELECT key, sequence FROM outbox WHERE event_type = $1",
            o_events.UsageRecorded.EVENT_TYPE,
        )
        assert [(r["key"], r["sequence"]) for r in recorded] == [(one, 3)]
        sequences = await first.fetch(
            "SELECT id, sequence FROM orders WHERE id = ANY($1::text[])", [one, two]
        )
        assert {r["id"]: r["sequence"] for r in sequences} == {one: 3, two: 2}
    finally:
        await first.close()
        await second.close()


class CountingRows:
    """A real connection that counts the rows its ``fetch`` calls bring back."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self.conn = conn
        self.rows = 0

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        found = await self.conn.fetch(sql, *args)
        self.rows += len(found)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


async def test_a_usage_report_does_not_read_the_orders_earlier_usage(
    migrated_orders_db: str,
) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        order_id = await confirmed_order(conn)
        earlier = 2_000
        await conn.execute(
            "INSERT INTO usage_records (reporter_id, usage_id, order_id, charge_id, amount,"
            " quantity, occurred_at) SELECT $1, 'old-' || i, $2, 'usage.old.' || i, 3, 1, $3"
            " FROM generate_series(1, $4) i",
            ISV,
            order_id,
            NOW,
            earlier,
        )
        counting = CountingRows(conn)
        report = ReportUsage(
            usage_id="new", partner_id=ISV, component_partner_id=None, quantity=1, occurred_at=NOW
        )
        async with conn.transaction():
            await handlers.report_usage(cast(Connection, counting), order_id, report, NOW)
        assert counting.rows < 10, counting.rows
        charged = await conn.fetchval(
            "SELECT count(*) FROM usage_records WHERE order_id = $1", order_id
        )
        assert charged == earlier + 1
    finally:
        await conn.close()


async def test_an_order_read_whole_carries_every_usage_charge_and_a_cancel_refunds_them(
    migrated_orders_db: str,
) -> None:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        order_id = await confirmed_order(conn)
        for number, quantity in enumerate((4, 1, 7)):
            report = ReportUsage(
                usage_id=f"u-{number}",
                partner_id=ISV,
                component_partner_id=None,
                quantity=quantity,
                occurred_at=NOW,
            )
            async with conn.transaction():
                await handlers.report_usage(conn, order_id, report, NOW)
        # The read a change decides from (one JSON document) agrees field for
        # field with the read the listings use (rows), time zones included.
        [listed] = await store.orders_by_id(conn, [order_id], with_usage=True)
        read = await store.order_snapshot(conn, order_id)
        assert read is not None
        assert read.order == listed
        assert [u.amount for u in read.order.usage_charges] == [12, 3, 21]
        assert read.order.placed_at.tzinfo == listed.placed_at.tzinfo == UTC
        [fulfillment] = read.order.fulfillments
        by_fulfillment = await store.fulfillment_order_snapshot(
            conn, fulfillment.fulfillment_id, ISV
        )
        assert by_fulfillment == read

        await handlers.cancel_order(conn, "cus_usagerace", order_id, NOW, turns=OrderTurns())
        payload = await conn.fetchval(
            "SELECT payload FROM outbox WHERE event_type = $1 AND key = $2",
            o_events.OrderRefunded.EVENT_TYPE,
            order_id,
        )
        refunded = EventRegistry([o_events.OrderRefunded]).decode(decode_envelope(payload))
        assert isinstance(refunded, o_events.OrderRefunded)
        assert sorted((r.charge_id, r.amount) for r in refunded.refunds) == sorted(
            (u.charge_id, u.amount) for u in read.order.usage_charges
        )
    finally:
        await conn.close()
