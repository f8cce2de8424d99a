"""The orders topic replayed from offset 0 rebuilds the same ledger; twice changes nothing."""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg

from shared.contracts import orders
from shared.ids import new_id
from tests.integration.settlement.conftest import (
    Settlement,
    assert_trial_balance_zero,
    publish_order_events,
    running_settlement,
    wait_until_settled,
)
from tests.integration.settlement.order_events import OrderEvent, OrderScript, Part
from tests.support.infra import Infra, temporary_database
from tests.support.kafka import group_caught_up
from tests.support.keys import TokenKeys
from tests.support.waiting import wait_for


def history(partners: list[str], orders_count: int) -> list[OrderEvent]:
    """Many orders' lives, interleaved: charges, usage, fulfilment, refunds, cancellations."""
    rng = random.Random(9)
    interleaved: list[list[OrderEvent]] = []
    for _ in range(orders_count):
        owner, isv = rng.sample(partners, 2)
        order = OrderScript(customer_id=new_id("cus"), owner_id=owner)
        parts = [
            Part(isv, "isv", rng.choice([0, 3_333, 7_000, 10_000])),
            Part(owner, "isv", 10_000),
        ]
        charges = [order.charge(part, rng.randint(1, 99_999), i) for i, part in enumerate(parts)]
        events = [order.placed(sum(c.amount for c in charges)), order.confirmed(charges)]
        if rng.random() < 0.5:
            events.append(order.usage(parts[1], 1, unit_amount=7, quantity=rng.randint(1, 999)))
        fate = rng.random()
        if fate < 0.2:
            events += [order.cancelled(), order.refunded([(c, c.amount) for c in charges])]
        else:
            if fate < 0.5:
                events.append(order.refunded([(charges[0], rng.randint(0, charges[0].amount))]))
            events.append(order.fulfilled())
        interleaved.append(events)
    merged: list[OrderEvent] = []
    while interleaved:
        lane = rng.choice(interleaved)
        merged.append(lane.pop(0))
        if not lane:
            interleaved.remove(lane)
    return merged


async def snapshot(service: Settlement, partners: list[str]) -> dict[str, Any]:
    """Every partner's balance and statement, the trial balance and the three-way check
    (what the ledger holds per order), as the API tells them."""
    seen: dict[str, Any] = {}
    for partner in partners:
        statement = await service.operator(
            "GET", f"/v1/statements/{partner}", params={"limit": 500}
        )
        seen[partner] = (await service.balance(partner), statement.expect(200)["items"])
    seen["trial"] = (await service.operator("GET", "/v1/ledger/trial-balance")).expect(200)
    three_way = await service.operator("GET", "/v1/checks/three-way", params={"limit": 500})
    seen["three_way"] = three_way.expect(200)
    assert seen["three_way"]["next_cursor"] is None
    return seen


async def caught_up(service: Settlement, group: str) -> None:
    # Consumer groups are namespaced by the deployment's prefix, like its topics.
    topic = service.topic_prefix + orders.TOPIC.name
    await wait_for(
        lambda: group_caught_up(service.kafka_bootstrap, service.topic_prefix + group, topic),
        timeout=60,
        message="the replay did not reach the end of the orders topic",
    )


async def test_replaying_the_orders_topic_rebuilds_the_same_ledger(
    infra: Infra, token_keys: TokenKeys
) -> None:
    partners = [new_id("ptr") for _ in range(4)]
    events = history(partners, 60)
    prefix = f"t{uuid.uuid4().hex[:10]}."
    envelopes = [envelope for envelope, _ in events]
    async with temporary_database(infra, "replay_a") as first_db:
        async with running_settlement(
            infra,
            token_keys,
            database_url=first_db,
            topic_prefix=prefix,
            consumer_group="a1",
        ) as first:
            await publish_order_events(infra.kafka_bootstrap, prefix + orders.TOPIC.name, events)
            await wait_until_settled(first_db, envelopes, within=60)
            original = await snapshot(first, partners)
        assert any(original[partner][0]["available"] for partner in partners)
        assert len(original["three_way"]["items"]) == 60

        async with temporary_database(infra, "replay_b") as fresh_db:
            async with running_settlement(
                infra,
                token_keys,
                database_url=fresh_db,
                topic_prefix=prefix,
                consumer_group="b1",
            ) as rebuilt:
                await wait_until_settled(fresh_db, envelopes, within=60)
                assert await snapshot(rebuilt, partners) == original
            await assert_trial_balance_zero(fresh_db)

        # The same topic again into the first database: a new group reads it all again.
        # Forgetting which events were processed leaves only the ledger's own guards
        # (each order's sequence, natural entry keys), and they hold too.
        conn = await asyncpg.connect(first_db)
        try:
            await conn.execute("DELETE FROM processed_events")
        finally:
            await conn.close()
        async with running_settlement(
            infra,
            token_keys,
            database_url=first_db,
            topic_prefix=prefix,
            consumer_group="a2",
        ) as again:
            await caught_up(again, "a2")
            await wait_until_settled(first_db, envelopes, within=60)
            assert await snapshot(again, partners) == original
        await assert_trial_balance_zero(first_db)
