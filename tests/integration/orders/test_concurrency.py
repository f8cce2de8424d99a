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
from tests.integration.orders.conftest import Orders, publish_joint_offering
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
