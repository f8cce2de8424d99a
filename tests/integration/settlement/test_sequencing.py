"""Order events reach the ledger exactly once and in each order's sequence.

Both are the batch consumer's job (``sequencing="strict"``): these tests
publish to the running service's orders topic, duplicated and out of order.
"""

from __future__ import annotations

import asyncpg

from services.settlement.consumers import CONSUMER
from shared.ids import new_id
from shared.sequencing import parked_events
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part
from tests.support.waiting import wait_for


def isv_order() -> tuple[str, OrderScript, Part]:
    isv = new_id("ptr")
    return (
        isv,
        OrderScript(customer_id=new_id("cus"), owner_id=new_id("ptr")),
        Part(isv, "isv", 7_000),
    )


async def parked_for(settlement: Settlement, order_id: str) -> list[int]:
    conn = await asyncpg.connect(settlement.database_url)
    try:
        parked = await parked_events(conn, CONSUMER)
    finally:
        await conn.close()
    return [event.sequence for event in parked if event.key == order_id]


async def test_an_event_after_a_gap_waits_until_the_gap_fills(settlement: Settlement) -> None:
    isv, order, part = isv_order()
    placed = order.placed(10_000)
    confirmed = order.confirmed([order.charge(part, 10_000, 0)])
    fulfilled = order.fulfilled()
    await settlement.settle([fulfilled])
    await settlement.settle([placed])
    assert await settlement.balance(isv) == {
        "pending": 0,
        "available": 0,
        "in_transit": 0,
        "paid": 0,
    }
    assert await parked_for(settlement, order.order_id) == [3]
    # The missing event arrives: it applies, then the parked one after it.
    await settlement.settle([confirmed])
    assert await settlement.balance(isv) == {
        "pending": 0, "available": 6_790, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await parked_for(settlement, order.order_id) == []


async def test_events_out_of_order_in_one_chunk_apply_in_sequence(settlement: Settlement) -> None:
    isv, order, part = isv_order()
    events = [
        order.placed(10_000),
        order.confirmed([order.charge(part, 10_000, 0)]),
        order.fulfilled(),
    ]
    await settlement.settle(list(reversed(events)))
    assert (await settlement.balance(isv))["available"] == 6_790
    assert await parked_for(settlement, order.order_id) == []


async def test_the_same_events_twice_change_nothing(settlement: Settlement) -> None:
    isv, order, part = isv_order()
    events = [
        order.placed(10_000),
        order.confirmed([order.charge(part, 10_000, 0)]),
        order.fulfilled(),
    ]
    await settlement.settle(events)
    first = await settlement.balance(isv)
    # Redelivered copies, then the order's next event behind them on its partition:
    # once that one applied, the copies were seen (and changed nothing).
    usage = order.usage(part, 1, unit_amount=1, quantity=1_000)
    await settlement.settle([*events, events[1], usage])

    async def usage_booked() -> bool:
        return (await settlement.balance(isv))["available"] == 6_790 + 679

    await wait_for(usage_booked, timeout=10, message="the usage was not booked")
    assert first == {"pending": 0, "available": 6_790, "in_transit": 0, "paid": 0}
