"""Order events whose envelope key is not the order their payload books.

The ledger sequences an order's events by the envelope's ``key`` (one number
per key) but books each event on the order its payload names.  Whoever can
write to ``orders.orders`` therefore gets past strict sequencing by giving a
copy of an event a fresh key and ``sequence=1``: the copy is "the first event"
of an order nobody placed, and its charges or refunds land on a real order.
Orders always keys an order's events by that order's id, so a key that differs
from the payload's order is forged or corrupt and should be refused
(dead-lettered), the way a charge above the money cap is.
"""

from __future__ import annotations

import msgspec
from aiokafka.errors import KafkaError

from shared.contracts import orders
from shared.contracts.envelope import Envelope
from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part
from tests.support.kafka import TopicReader
from tests.support.waiting import wait_for


async def refused_or_booked(
    settlement: Settlement, envelope: Envelope, partner_id: str, before: dict[str, int]
) -> str:
    """Wait until the ledger dead-letters the event or the partner's balance moves.

    A strict consumer keeps no per-event row, so "booked" shows only as money moved.
    """
    topic = f"{settlement.topic_prefix}{orders.TOPIC.name}.dlq"
    async with TopicReader(settlement.kafka_bootstrap, topic) as reader:

        async def outcome() -> str | None:
            await reader.poll()
            if envelope.event_id in reader.event_ids():
                return "dead-lettered"
            return "booked" if await settlement.balance(partner_id) != before else None

        return await wait_for(
            outcome, timeout=30, ignore=(KafkaError,), message=f"{envelope.event_id} never handled"
        )


async def test_a_refund_under_another_orders_key_moves_nothing(settlement: Settlement) -> None:
    partner = new_id("ptr")
    order = OrderScript(customer_id=new_id("cus"), owner_id=partner)
    charge = order.charge(Part(partner, "isv", 10_000), 10_000, 0)
    await settlement.settle([order.placed(10_000), order.confirmed([charge]), order.fulfilled()])
    earned = await settlement.balance(partner)
    assert earned["available"] == 9_700

    envelope, refund = order.refunded([(charge, 10_000)])
    rekeyed = msgspec.structs.replace(envelope, key=new_id("ord"), sequence=1)
    await settlement.publish([(rekeyed, refund)])

    assert await refused_or_booked(settlement, rekeyed, partner, earned) == "dead-lettered"
    assert await settlement.balance(partner) == earned


async def test_a_second_confirmation_under_another_key_charges_nothing_twice(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    order = OrderScript(customer_id=new_id("cus"), owner_id=partner)
    charge = order.charge(Part(partner, "isv", 10_000), 10_000, 0)
    await settlement.settle([order.placed(10_000), order.confirmed([charge])])
    owed = await settlement.balance(partner)
    assert owed["pending"] == 9_700

    # The order's confirmation again, with charge ids of its own, as the first
    # event of a key no order has.
    again = order.charge(Part(partner, "isv", 10_000), 10_000, 0)
    envelope, confirmation = order.confirmed([again])
    rekeyed = msgspec.structs.replace(envelope, key=new_id("ord"), sequence=1)
    await settlement.publish([(rekeyed, confirmation)])

    assert await refused_or_booked(settlement, rekeyed, partner, owed) == "dead-lettered"
    assert await settlement.balance(partner) == owed
