"""Scale-out: a second orders and a second settlement process share the work, not the effects.

Each joins its service's consumer group and takes partitions (as the broker
describes the group). Orders placed and answered through either orders
instance are one saga; a deadline both instances' timers see cancels its
order once; two payout runs sent at the same moment to the two settlement
instances pay each partner once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from tests.e2e.marketplace import Deal, Marketplace, make_deal, offerings_known_to_orders
from tests.e2e.verify import verify_books
from tests.support.infra import Infra
from tests.support.kafka import TopicReader, end_offsets
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import ServiceProcess, Stack, describe_group, running_stack
from tests.support.waiting import wait_for

# Several processes started and waited for, on a machine CI and benchmarks share.
pytestmark = pytest.mark.timeout(240)
ACCEPTANCE_DEADLINE_SECONDS = 5.0
GROUP_TIMEOUT = 45.0  # a join waits for the others' next poll; a rebalance takes a while
ORDERS_PER_INSTANCE = 3


@pytest.fixture
async def scaled(infra: Infra, token_keys: TokenKeys, processes: Processes) -> AsyncIterator[Stack]:
    async with running_stack(
        infra, token_keys, processes, acceptance_deadline_seconds=ACCEPTANCE_DEADLINE_SECONDS
    ) as started:
        yield started


async def group_shared_by_two(stack: Stack, group: str, partitions: int) -> None:
    """Two members, each holding partitions, together holding all of them once."""

    async def shared() -> bool:
        state = await describe_group(stack.infra.kafka_bootstrap, group)
        if not state.stable_with(2):
            return False
        held = Counter(p for partitions in state.members.values() for p in partitions)
        return sum(held.values()) == partitions

    await wait_for(
        shared, timeout=GROUP_TIMEOUT, interval=0.5, message=f"{group} is not shared by two"
    )


async def place_and_answer(
    mp: Marketplace, deal: Deal, index: int, place_at: ServiceProcess, answer_at: ServiceProcess
) -> str:
    """An order placed through one orders instance and answered through the other."""
    customer = deal.customers[index % len(deal.customers)]
    placed = (
        await mp.answered(
            "POST", "orders", "/v1/orders", token=customer.token,
            json={"lines": [{"offering_id": deal.joint_offering_id, "quantity": 1 + index % 3}]},
            idempotency_key=f"scale-{index}", base_url=place_at.base_url,
        )
    ).expect(201)  # fmt: skip
    order_id: str = placed["id"]
    for verb in ("accept", "complete"):
        for party in deal.partners.values():
            items = await mp.pages("orders", "/v1/fulfillments", token=party.token)
            (mine,) = [item for item in items if item["order_id"] == order_id]
            path = f"/v1/fulfillments/{mine['id']}/{verb}"
            reply = await mp.answered(
                "POST", "orders", path, token=party.token, base_url=answer_at.base_url
            )
            reply.expect(200)
    return order_id


async def cancellations_of(stack: Stack, order_id: str) -> int:
    """Distinct cancellation events about ``order_id`` on the orders topic, read to its end."""
    topic = stack.topic("orders.orders")
    written = sum((await end_offsets(stack.infra.kafka_bootstrap, topic)).values())
    async with TopicReader(stack.infra.kafka_bootstrap, topic) as reader:

        async def all_read() -> bool:
            return len(await reader.poll()) >= written

        await wait_for(all_read, timeout=20, message=f"{topic} was not read to its end")
        return len(
            {
                reader.header(record, "event-id")
                for record in reader.records
                if record.key == order_id.encode()
                and reader.header(record, "event-type") == "orders.order.cancelled"
            }
        )


async def test_second_instances_share_partitions_and_every_effect_happens_once(
    scaled: Stack,
) -> None:
    stack = scaled
    async with aiohttp.ClientSession() as session:
        mp = Marketplace(session, stack)
        deal = await make_deal(mp, customers=2)
        probe = await offerings_known_to_orders(mp, deal)

        orders_2 = await stack.add_replica("orders")
        settlement_2 = await stack.add_replica("settlement")
        await group_shared_by_two(stack, stack.settlement_group, partitions=6)
        # Orders' copy of the catalog reads two topics of six partitions each.
        await group_shared_by_two(stack, stack.orders_catalog_group, partitions=12)

        orders: list[str] = [probe]
        for index in range(ORDERS_PER_INSTANCE * 2):
            first, second = (stack.orders, orders_2) if index % 2 else (orders_2, stack.orders)
            orders.append(await place_and_answer(mp, deal, index, first, second))

        # Nobody answers this one: both instances' timers see its deadline pass.
        unanswered = (
            await mp.answered(
                "POST", "orders", "/v1/orders", token=deal.customers[0].token,
                json={"lines": [{"offering_id": deal.listing_id, "quantity": 1}]},
                idempotency_key="scale-unanswered",
            )
        ).expect(201)["id"]  # fmt: skip
        orders.append(unanswered)

        async def cancelled() -> bool:
            reply = await mp.answered(
                "GET", "orders", f"/v1/orders/{unanswered}", token=stack.operator_token
            )
            return bool(reply.expect(200)["status"] == "cancelled")

        await wait_for(
            cancelled, timeout=ACCEPTANCE_DEADLINE_SECONDS * 6, message="the deadline never fired"
        )
        await stack.wait_settled()
        assert await cancellations_of(stack, unanswered) == 1

        # Two payout runs at once, one per settlement instance.
        as_of = {"as_of": datetime.now(UTC).isoformat()}
        runs = await asyncio.gather(
            *(
                mp.answered(
                    "POST", "settlement", "/v1/payouts/run", token=stack.operator_token,
                    json=as_of, base_url=instance.base_url,
                )
                for instance in (stack.settlement, settlement_2)
            )
        )  # fmt: skip
        made: list[dict[str, Any]] = [p for run in runs for p in run.expect(201)["payouts"]]
        assert sorted(p["partner_id"] for p in made) == sorted(
            party.id for party in deal.partners.values()
        ), made

        seen = {
            order_id: (
                await mp.answered(
                    "GET", "orders", f"/v1/orders/{order_id}", token=stack.operator_token
                )
            ).expect(200)
            for order_id in orders
        }
        assert Counter(order["status"] for order in seen.values()) == {
            "fulfilled": ORDERS_PER_INSTANCE * 2,
            "cancelled": 2,
        }
        expected, _, problems = await verify_books(mp, deal, seen, [])
        assert not problems, problems
        for p in made:
            assert p["amount"]["amount"] == expected.released[p["partner_id"]], p
