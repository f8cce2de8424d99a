"""One order, three partners: fan-out, confirmation, fulfilment, a rejection's compensation."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from tests.integration.catalog.conftest import Catalog, TopicEvent
from tests.integration.orders.conftest import JointOffering, Orders, publish_joint_offering

pytestmark = pytest.mark.asyncio(loop_scope="session")


def of_order(events: list[TopicEvent], order_id: str) -> list[TopicEvent]:
    found = []
    for e in events:
        payload: Any = e.event
        owner = getattr(payload, "fulfillment", None) or getattr(payload, "order", None)
        order = getattr(owner, "order_id", None) or getattr(payload, "order_id", None)
        if order == order_id:
            found.append(e)
    return found


async def fulfillment_events(catalog: Catalog, order_id: str, count: int) -> list[TopicEvent]:
    return of_order(
        await catalog.wait_for_events(
            f_events.TOPIC,
            lambda events: len(of_order(events, order_id)) >= count,
            message=f"{count} fulfillment events of {order_id}",
        ),
        order_id,
    )


async def order_events(catalog: Catalog, order_id: str, count: int) -> list[TopicEvent]:
    return of_order(
        await catalog.wait_for_events(
            o_events.TOPIC,
            lambda events: len(of_order(events, order_id)) >= count,
            message=f"{count} order events of {order_id}",
        ),
        order_id,
    )


async def place_joint_order(orders: Orders, catalog: Catalog, offering: JointOffering) -> Any:
    customer = await catalog.sign_up_customer()
    reply = await orders.place(customer, [{"offering_id": offering.id, "quantity": 2}])
    return customer, reply.expect(201)


async def test_three_partners_are_asked_once_each_then_confirmed_and_fulfilled(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer, order = await place_joint_order(orders, catalog, offering)
    assert order["status"] == "pending"
    assert order["total"] == {"amount": 16_000, "currency": "USD"}
    assert [(line["offering_id"], line["quantity"]) for line in order["lines"]] == [
        (offering.id, 2)
    ]
    assert order["lines"][0]["amount"] == {"amount": 16_000, "currency": "USD"}

    requested = await fulfillment_events(catalog, order["id"], 3)
    assert all(isinstance(e.event, f_events.FulfillmentRequested) for e in requested)
    assert sorted(e.key for e in requested) == sorted(p.id for p in offering.partners)
    isv_request = next(e.event for e in requested if e.key == offering.isv.id)
    assert isinstance(isv_request, f_events.FulfillmentRequested)
    assert isv_request.fulfillment.customer_id == customer.id
    assert [c.owner_id for c in isv_request.fulfillment.components] == [offering.msp.id]

    fulfillment_ids = {}
    for partner in offering.partners:
        mine = await orders.fulfillment_of(partner, order["id"])
        assert (mine["partner_id"], mine["status"]) == (partner.id, "requested")
        assert mine["accept_by"] == order["accept_by"]
        fulfillment_ids[partner.id] = mine["id"]

    for partner in offering.partners:
        (await orders.answer(partner, fulfillment_ids[partner.id], "accept")).expect(200)
    seen = await orders.call("GET", f"/v1/orders/{order['id']}", token=customer.token)
    assert seen.expect(200)["status"] == "confirmed"

    for partner in offering.partners:
        (await orders.answer(partner, fulfillment_ids[partner.id], "complete")).expect(200)
    fulfilled = (
        await orders.call("GET", f"/v1/orders/{order['id']}", token=customer.token)
    ).expect(200)
    assert fulfilled["status"] == "fulfilled"
    assert {f["status"] for f in fulfilled["fulfillments"]} == {"completed"}

    history = await order_events(catalog, order["id"], 3)
    assert [(e.envelope.sequence, type(e.event)) for e in history] == [
        (1, o_events.OrderPlaced),
        (2, o_events.OrderConfirmed),
        (3, o_events.OrderFulfilled),
    ]
    confirmed = history[1].event
    assert isinstance(confirmed, o_events.OrderConfirmed)
    assert sorted((c.partner_id, c.amount, c.share_bps) for c in confirmed.charges) == sorted(
        [
            (offering.isv.id, 10_000, 7_000),
            (offering.msp.id, 4_000, 10_000),
            (offering.integrator.id, 2_000, 9_000),
        ]
    )
    assert all(e.key == order["id"] for e in history)


async def test_one_rejection_cancels_the_order_and_the_owner_sees_every_fulfillment(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    _, first = await place_joint_order(orders, catalog, offering)
    _, second = await place_joint_order(orders, catalog, offering)

    isv = await orders.fulfillment_of(offering.isv, second["id"])
    msp = await orders.fulfillment_of(offering.msp, second["id"])
    integrator = await orders.fulfillment_of(offering.integrator, second["id"])
    (await orders.answer(offering.isv, isv["id"], "accept")).expect(200)
    rejected = (await orders.answer(offering.integrator, integrator["id"], "reject")).expect(200)
    assert (rejected["status"], rejected["reason"]) == ("rejected", "no capacity")

    answered = await orders.answer(offering.msp, msp["id"], "accept")
    assert answered.expect(409)["detail"].startswith("the order is cancelled")

    events = await fulfillment_events(catalog, second["id"], 3 + 1 + 1 + 2)
    compensated = {e.key for e in events if isinstance(e.event, f_events.FulfillmentCancelled)}
    assert compensated == {offering.isv.id, offering.msp.id}
    history = await order_events(catalog, second["id"], 2)
    assert [(e.envelope.sequence, type(e.event)) for e in history] == [
        (1, o_events.OrderPlaced),
        (2, o_events.OrderCancelled),
    ]

    owner_view = await orders.call("GET", "/v1/orders", token=offering.msp.token)
    listed = {o["id"]: o for o in owner_view.expect(200)["items"]}
    assert set(listed) == {first["id"], second["id"]}
    assert listed[second["id"]]["status"] == "cancelled"
    whole = (
        await orders.call("GET", f"/v1/orders/{second['id']}", token=offering.msp.token)
    ).expect(200)
    assert {(f["partner_id"], f["status"]) for f in whole["fulfillments"]} == {
        (offering.isv.id, "cancelled"),
        (offering.msp.id, "cancelled"),
        (offering.integrator.id, "rejected"),
    }
    assert len(listed[first["id"]]["fulfillments"]) == 3
    cancelled = await orders.call(
        "GET", "/v1/orders", token=offering.msp.token, params={"status": "cancelled"}
    )
    assert [o["id"] for o in cancelled.expect(200)["items"]] == [second["id"]]


async def test_other_tenants_get_404(catalog: Catalog, orders: Orders) -> None:
    offering = await publish_joint_offering(catalog, orders)
    _, order = await place_joint_order(orders, catalog, offering)
    stranger = await catalog.sign_up_customer()
    other_partner = await catalog.onboard_partner("isv")
    path = f"/v1/orders/{order['id']}"
    # A component partner that is not the accountable owner sees its fulfilment, not the order.
    for token in (stranger.token, other_partner.token, offering.isv.token):
        assert (await orders.call("GET", path, token=token)).status == 404
    assert (await orders.call("POST", f"{path}/cancel", token=stranger.token)).status == 404
    isv = await orders.fulfillment_of(offering.isv, order["id"])
    assert (await orders.answer(offering.msp, isv["id"], "accept")).status == 404
    listed = await orders.call("GET", "/v1/orders", token=stranger.token)
    assert listed.expect(200)["items"] == []
    assert (await orders.call("GET", path, token=catalog.operator_token)).status == 200
