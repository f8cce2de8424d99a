"""Optimistic changes of an order: interleavings found in review.

* a steady stream of usage reports (each holding the order's row lock) does
  not starve a cancel: after a few lost races it queues on the lock;
* a change made inside a transaction hands nothing on to the next in turn.
"""

from __future__ import annotations

import asyncio
from typing import cast

import asyncpg
import pytest

from services.orders import domain, handlers
from services.orders.domain import Accept, Order
from services.orders.turns import OrderTurns
from shared.db import Connection
from shared.errors import DomainError
from tests.integration.orders.test_optimistic_changes import (
    CUSTOMER,
    INTEGRATOR,
    ISV,
    MSP,
    NOW,
    PLACED_AT,
    Counting,
    Db,
    Placed,
    answer,
    fulfillment_statuses,
    placed,  # noqa: F401 - the fixture
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_cancel_is_not_starved_by_a_steady_stream_of_usage_reports(
    placed: Placed,  # noqa: F811 - the fixture imported above
    migrated_orders_db: str,
) -> None:
    """A partner flushing metered usage with two workers keeps the order's row locked
    across each report's five round trips.  An optimistic cancel's write queues behind
    one report, finds the version moved, reads again and queues behind the next: under
    the former row lock it took its turn in the queue and landed."""
    conn, order = placed.conn, placed.order
    for partner_id in (ISV, MSP, INTEGRATOR):
        await answer(conn, order, partner_id)
    reporters: list[Db] = [await asyncpg.connect(migrated_orders_db) for _ in range(2)]
    stop = asyncio.Event()
    reported = 0

    async def report_steadily(reporter: Db, worker: int) -> None:
        nonlocal reported
        n = 0
        while not stop.is_set():
            n += 1
            report = domain.ReportUsage(
                usage_id=f"u-{worker}-{n}",
                partner_id=ISV,
                component_partner_id=None,
                quantity=1,
                occurred_at=NOW,
            )
            try:
                async with reporter.transaction():
                    await handlers.report_usage(reporter, order.order_id, report, NOW)
            except DomainError:
                return  # the order is cancelled: nothing more to meter
            reported += 1

    streams = [asyncio.create_task(report_steadily(r, w)) for w, r in enumerate(reporters)]
    try:
        await wait_for(lambda: reported >= 20, message="the usage stream never flowed")
        cancelled = await handlers.cancel_order(conn, CUSTOMER, order.order_id, NOW)
    finally:
        stop.set()
        await asyncio.gather(*streams)
        for reporter in reporters:
            await reporter.close()
    assert cancelled.status == "cancelled"


def fulfillment(order: Order, partner_id: str) -> str:
    found = order.fulfillment_of(partner_id)
    assert found is not None
    return found.fulfillment_id


class _RolledBack(Exception):
    pass


async def test_a_change_that_rolls_back_hands_nothing_on_to_the_next_in_turn(
    placed: Placed,  # noqa: F811 - the fixture imported above
    migrated_orders_db: str,
) -> None:
    """Under an Idempotency-Key the change's write is inside the key's transaction,
    which may still roll back: the next change in turn must decide from what it read,
    never from that write.  (Without the guard it would start from the ISV's accept
    that never happened, lose the version check and read again.)"""
    conn, other, order = placed.conn, placed.other, placed.order
    turns = OrderTurns()
    blocker: Db = await asyncpg.connect(migrated_orders_db)
    isv_waits = asyncio.Event()
    msp = Counting(other)

    async def isv_accepts_then_rolls_back() -> None:
        try:
            async with conn.transaction():
                await handlers.answer_fulfillment(
                    conn, ISV, fulfillment(order, ISV), Accept(ISV), PLACED_AT, turns=turns
                )
                isv_waits.set()
                await msp_waits_on_the_row.wait()
                raise _RolledBack
        except _RolledBack:
            return

    msp_waits_on_the_row = asyncio.Event()
    try:
        # Hold the order's row so the ISV's write waits inside its turn.
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order.order_id)
        isv = asyncio.create_task(isv_accepts_then_rolls_back())
        await wait_for(
            lambda: order.order_id in turns._orders, message="the ISV never took its turn"
        )
        msp_answer = asyncio.create_task(
            handlers.answer_fulfillment(
                cast(Connection, msp),
                MSP,
                fulfillment(order, MSP),
                Accept(MSP),
                PLACED_AT,
                turns=turns,
            )
        )
        await wait_for(
            lambda: turns._orders[order.order_id].changes == 2, message="the MSP never queued"
        )
        await holding.commit()
        await asyncio.wait_for(isv_waits.wait(), timeout=20)

        async def msp_waits() -> bool:
            blockers = await blocker.fetchval("SELECT pg_blocking_pids($1)", other.get_server_pid())
            return conn.get_server_pid() in blockers

        await wait_for(msp_waits, message="the MSP's write never waited on the ISV's")
        msp_waits_on_the_row.set()
        await isv
        after = await msp_answer
    finally:
        await blocker.close()

    assert msp.reads == 1
    assert {f.partner_id: f.status for f in after.fulfillments} == {
        ISV: "requested",
        MSP: "accepted",
        INTEGRATOR: "requested",
    }
    assert await fulfillment_statuses(conn, order.order_id) == {
        ISV: "requested",
        MSP: "accepted",
        INTEGRATOR: "requested",
    }
