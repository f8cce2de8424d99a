"""Order events no orders service could have written, produced straight onto the topic.

Orders caps every line and every usage charge at the shared money cap
(``shared.money.MAX_AMOUNT``), so a charge above it on ``orders.orders`` is
forged or corrupt.  Booked, it moved balances by quintillions, and because the
ledger's accounts are 64-bit sums, the next real charge then overflowed them
and was dead-lettered in its place: one bad event stopped every later order
from being settled.  A module of its own: its ledger must not be shared with
tests that a booked forgery would break.
"""

from __future__ import annotations

import asyncpg
import msgspec
from aiokafka.errors import KafkaError

from services.settlement.consumers import CONSUMER
from shared.contracts import orders
from shared.ids import new_id
from shared.money import MAX_AMOUNT
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part
from tests.support.kafka import TopicReader
from tests.support.waiting import wait_for

NOTHING = {"pending": 0, "available": 0, "in_transit": 0, "paid": 0}


async def dead_lettered(settlement: Settlement, event_id: str) -> bool:
    """Wait until the ledger has dealt with the event: True if dead-lettered, False if booked."""
    topic = f"{settlement.topic_prefix}{orders.TOPIC.name}.dlq"
    conn = await asyncpg.connect(settlement.database_url)
    try:
        async with TopicReader(settlement.kafka_bootstrap, topic) as reader:

            async def dealt_with() -> str | None:
                await reader.poll()
                if event_id in reader.event_ids():
                    return "dead-lettered"
                booked = await conn.fetchval(
                    "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
                    CONSUMER,
                    event_id,
                )
                return "booked" if booked else None

            outcome = await wait_for(
                dealt_with, timeout=30, ignore=(KafkaError,), message=f"{event_id} never handled"
            )
    finally:
        await conn.close()
    return outcome == "dead-lettered"


async def test_a_charge_above_the_money_cap_is_dead_lettered_and_moves_nothing(
    settlement: Settlement,
) -> None:
    owner, isv = new_id("ptr"), new_id("ptr")
    forged = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    huge = forged.charge(Part(isv, "isv", 7_000, new_id("agr")), 9 * 10**18, 0)
    just_over = forged.charge(Part(owner, "managed_service", 10_000), MAX_AMOUNT + 1, 1)
    placed = forged.placed(huge.amount)
    confirmed = forged.confirmed([huge, just_over])
    await settlement.settle([placed])
    await settlement.publish([confirmed])
    refused = await dead_lettered(settlement, confirmed[0].event_id)

    assert await settlement.balance(isv) == NOTHING
    assert await settlement.balance(owner) == NOTHING
    assert refused

    # A real order after it is booked as ever.
    honest = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    charge = honest.charge(Part(owner, "managed_service", 10_000), MAX_AMOUNT, 0)
    await settlement.settle([honest.placed(MAX_AMOUNT), honest.confirmed([charge])])
    assert (await settlement.balance(owner))["pending"] == MAX_AMOUNT - MAX_AMOUNT * 3 // 100


async def test_a_usage_charge_above_the_money_cap_is_dead_lettered(
    settlement: Settlement,
) -> None:
    owner = new_id("ptr")
    forged = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    meter = Part(owner, "managed_service", 10_000)
    await settlement.settle([forged.placed(0), forged.confirmed([])])
    usage = forged.usage(meter, 0, MAX_AMOUNT, 2)
    await settlement.publish([usage])
    refused = await dead_lettered(settlement, usage[0].event_id)
    assert await settlement.balance(owner) == NOTHING
    assert refused


async def test_an_unnumbered_refund_after_an_orders_numbered_events_moves_nothing(
    settlement: Settlement,
) -> None:
    """Orders numbers every event of an order; one without a number after them is out of order.

    The consumer lets an event without a ``sequence`` through on its event id
    alone (for messages older than numbering), so whoever can write to the topic
    refunds a fulfilled, paid-for order with a copy of a refund that has no
    number: the partner's balance drops though orders never refunded anything.
    """
    partner = new_id("ptr")
    order = OrderScript(customer_id=new_id("cus"), owner_id=partner)
    charge = order.charge(Part(partner, "isv", 10_000), 10_000, 0)
    await settlement.settle([order.placed(10_000), order.confirmed([charge]), order.fulfilled()])
    earned = await settlement.balance(partner)
    assert earned["available"] == 9_700

    envelope, refund = order.refunded([(charge, 10_000)])
    unnumbered = msgspec.structs.replace(envelope, sequence=None)
    await settlement.publish([(unnumbered, refund)])
    await dead_lettered(settlement, unnumbered.event_id)

    assert await settlement.balance(partner) == earned
