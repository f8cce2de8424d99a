"""Racing answers and duplicate POSTs: one outcome, a gap-free sequence, one order."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import JointOffering, Orders, publish_joint_offering
from tests.integration.orders.test_optimistic_changes import count, of_order, recorded
from tests.integration.orders.test_saga import fulfillment_events, order_events

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_fifty_racing_accepts_rejects_and_cancels_leave_one_outcome(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    order = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(
        201
    )
    mine = {p.id: await orders.fulfillment_of(p, order["id"]) for p in offering.partners}
    calls: list[Any] = []
    for i in range(50):
        partner = offering.partners[i % 3]
        verb = random.Random(i).choice(["accept", "accept", "reject", "cancel"])
        if verb == "cancel":
            calls.append(
                orders.call("POST", f"/v1/orders/{order['id']}/cancel", token=customer.token)
            )
        else:
            calls.append(orders.answer(partner, mine[partner.id]["id"], verb))
    replies = await asyncio.gather(*calls)
    assert {r.status for r in replies} <= {200, 409}, [r.body for r in replies if r.status >= 500]

    final = (await orders.call("GET", f"/v1/orders/{order['id']}", token=customer.token)).expect(
        200
    )
    async with orders.database() as db:
        sequence = await db.fetchval("SELECT sequence FROM orders WHERE id = $1", order["id"])
    history = await order_events(catalog, order["id"], sequence)
    assert [e.envelope.sequence for e in history] == list(range(1, sequence + 1))
    kinds = Counter(type(e.event) for e in history)
    assert kinds[o_events.OrderPlaced] == 1
    assert kinds[o_events.OrderCancelled] <= 1
    assert kinds[o_events.OrderConfirmed] <= 1
    statuses = {f["status"] for f in final["fulfillments"]}
    if final["status"] == "cancelled":
        assert kinds[o_events.OrderCancelled] == 1
        assert statuses <= {"cancelled", "rejected"}
        assert len([f for f in final["fulfillments"] if f["status"] == "rejected"]) <= 1
    else:
        assert final["status"] == "confirmed"
        assert statuses == {"accepted"}

    answers = await fulfillment_events(catalog, order["id"], 3)
    per_partner = Counter(
        (e.key, type(e.event).__name__)
        for e in answers
        if not isinstance(e.event, f_events.FulfillmentRequested)
    )
    assert all(count == 1 for count in per_partner.values()), per_partner


async def test_fifty_parallel_posts_with_one_idempotency_key_create_one_order(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    lines = [{"offering_id": offering.id, "quantity": 3}]
    headers = {"Idempotency-Key": f"order-{customer.id}"}
    replies = await asyncio.gather(
        *(orders.place(customer, lines, headers=headers) for _ in range(50))
    )
    assert {r.status for r in replies} == {201}
    assert len({r.body["id"] for r in replies}) == 1
    listed = (await orders.call("GET", "/v1/orders", token=customer.token)).expect(200)
    assert [o["id"] for o in listed["items"]] == [replies[0].body["id"]]
    async with orders.database() as db:
        assert (
            await db.fetchval(
                "SELECT count(*) FROM fulfillments WHERE order_id = $1", replies[0].body["id"]
            )
            == 3
        )
    other = await orders.place(
        customer, [{"offering_id": offering.id, "quantity": 4}], headers=headers
    )
    assert other.status == 409


async def fulfillments_of(
    orders: Orders, offering: JointOffering, order_ids: list[str]
) -> dict[str, dict[str, str]]:
    """order id → partner id → that partner's fulfilment id."""
    found: dict[str, dict[str, str]] = {order_id: {} for order_id in order_ids}
    for partner in offering.partners:
        reply = await orders.call(
            "GET", "/v1/fulfillments", token=partner.token, params={"limit": 500}
        )
        for item in reply.expect(200)["items"]:
            if item["order_id"] in found:
                found[item["order_id"]][partner.id] = item["id"]
    return found


async def test_three_partners_answering_at_once_confirm_and_fulfil_each_order_once(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    placed = [
        (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(201)
        for _ in range(6)
    ]
    order_ids = [order["id"] for order in placed]
    mine = await fulfillments_of(orders, offering, order_ids)

    for verb in ("accept", "complete"):
        # Every partner of every order at once; half of them under an Idempotency-Key,
        # where the change runs inside the key's transaction.
        replies = await asyncio.gather(
            *(
                orders.call(
                    "POST",
                    f"/v1/fulfillments/{mine[order_id][partner.id]}/{verb}",
                    token=partner.token,
                    headers={"Idempotency-Key": f"{verb}-{order_id}"} if n % 2 else None,
                )
                for order_id in order_ids
                for n, partner in enumerate(offering.partners)
            )
        )
        assert [r.status for r in replies] == [200] * len(replies), [r.body for r in replies]

    async with orders.database() as db:
        for order_id in order_ids:
            assert await db.fetchval("SELECT status FROM orders WHERE id = $1", order_id) == (
                "fulfilled"
            )
            events = await recorded(db, order_id)
            assert of_order(events) == [
                (o_events.OrderPlaced.EVENT_TYPE, 1),
                (o_events.OrderConfirmed.EVENT_TYPE, 2),
                (o_events.OrderFulfilled.EVENT_TYPE, 3),
            ]
            for answered in (f_events.FulfillmentAccepted, f_events.FulfillmentCompleted):
                assert count(events, answered.EVENT_TYPE) == 3


async def test_a_cancel_racing_the_last_accept_leaves_one_consistent_outcome(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    placed = [
        (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(201)
        for _ in range(6)
    ]
    order_ids = [order["id"] for order in placed]
    mine = await fulfillments_of(orders, offering, order_ids)
    last = offering.integrator
    for order_id in order_ids:
        for partner in (offering.isv, offering.msp):
            (await orders.answer(partner, mine[order_id][partner.id], "accept")).expect(200)

    for order_id in order_ids:
        accepted, cancelled = await asyncio.gather(
            orders.answer(last, mine[order_id][last.id], "accept"),
            orders.call("POST", f"/v1/orders/{order_id}/cancel", token=customer.token),
        )
        assert cancelled.status == 200, cancelled.body
        async with orders.database() as db:
            events = await recorded(db, order_id)
            statuses = await db.fetch(
                "SELECT status FROM fulfillments WHERE order_id = $1", order_id
            )
        assert {row["status"] for row in statuses} == {"cancelled"}
        if accepted.status == 200:
            # The accept landed first: confirmed, then cancelled and refunded.
            assert of_order(events) == [
                (o_events.OrderPlaced.EVENT_TYPE, 1),
                (o_events.OrderConfirmed.EVENT_TYPE, 2),
                (o_events.OrderCancelled.EVENT_TYPE, 3),
                (o_events.OrderRefunded.EVENT_TYPE, 4),
            ]
            assert count(events, f_events.FulfillmentAccepted.EVENT_TYPE) == 3
        else:
            # The cancel landed first: the accept found the order cancelled.
            assert accepted.status == 409, accepted.body
            assert of_order(events) == [
                (o_events.OrderPlaced.EVENT_TYPE, 1),
                (o_events.OrderCancelled.EVENT_TYPE, 2),
            ]
            assert count(events, f_events.FulfillmentAccepted.EVENT_TYPE) == 2
        assert count(events, f_events.FulfillmentCancelled.EVENT_TYPE) == 3
