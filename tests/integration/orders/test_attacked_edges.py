"""Holes found by attacking the running orders service as a careless client and as an attacker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.money import MAX_AMOUNT
from tests.integration.catalog.conftest import Account, Catalog
from tests.integration.orders.conftest import Orders, publish_joint_offering
from tests.integration.orders.test_placement import confirmed_order

pytestmark = pytest.mark.asyncio(loop_scope="session")


def usage(order_id: str, usage_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "usage_id": usage_id,
        "order_id": order_id,
        "quantity": 5,
        "occurred_at": datetime.now(UTC).isoformat(),
        **changes,
    }


async def report(orders: Orders, partner: Account, body: dict[str, Any]) -> Any:
    return await orders.call("POST", "/v1/usage", token=partner.token, body=body)


async def test_usage_for_an_order_the_partner_has_no_part_in_answers_as_for_no_order(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders, usage=True)
    _, order = await confirmed_order(orders, catalog, offering)
    stranger = await catalog.onboard_partner("isv")
    unknown = await report(orders, stranger, usage("ord_01m81mtcsydrb8ycqac853798j", "u-1"))
    answers = {
        "someone else's order": await report(orders, stranger, usage(order["id"], "u-1")),
        "naming a partner of it": await report(
            orders, stranger, usage(order["id"], "u-1", component_partner_id=offering.isv.id)
        ),
    }
    assert unknown.status == 422
    for why, answer in answers.items():
        assert (answer.status, answer.body) == (unknown.status, unknown.body), why


async def test_a_usage_id_is_charged_once_even_when_reported_for_two_orders_at_once(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders, usage=True)
    # Reports for different orders do not queue on one order's lock: they race to the insert.
    ids = [(await confirmed_order(orders, catalog, offering))[1]["id"] for _ in range(6)]
    aimed = [ids[i % len(ids)] for i in range(48)]
    counted: list[str] = []
    # A few rounds: which unique index a losing insert trips first is up to timing.
    for usage_id in ("u-race-1", "u-race-2", "u-race-3"):
        replies = await asyncio.gather(
            *(report(orders, offering.isv, usage(order_id, usage_id)) for order_id in aimed)
        )
        async with orders.database() as db:
            counted_for = await db.fetchval(
                "SELECT order_id FROM usage_records WHERE reporter_id = $1 AND usage_id = $2",
                offering.isv.id,
                usage_id,
            )
        statuses = {(order_id, r.status) for order_id, r in zip(aimed, replies, strict=True)}
        expected = {(i, 202 if i == counted_for else 409) for i in ids}
        assert statuses == expected, usage_id
        other = next(i for i in ids if i != counted_for)
        again = await report(orders, offering.isv, usage(other, usage_id))
        assert again.status == 409
        assert "another order" in again.body["detail"]
        counted.append(counted_for)
    async with orders.database() as db:
        rows = await db.fetch("SELECT id, sequence FROM orders WHERE id = ANY($1::text[])", ids)
    # Placed, confirmed, then one event per usage counted for it: none for a charge never made.
    assert {row["id"]: row["sequence"] for row in rows} == {
        order_id: 2 + counted.count(order_id) for order_id in ids
    }


async def test_a_line_or_a_usage_charge_never_exceeds_the_money_cap(
    catalog: Catalog, orders: Orders
) -> None:
    owner = await catalog.onboard_partner("managed_service")
    pricey = catalog.component(owner, pricing={"model": "one_time", "unit_amount": MAX_AMOUNT})
    metered = catalog.component(
        owner, name="Metered", pricing={"model": "usage", "unit_amount": 10**6, "unit": "GB-hour"}
    )
    offering = await catalog.create_offering(owner, components=[pricey, metered])
    await catalog.publish(owner, offering["id"])
    await orders.wait_until_known(offering["id"])
    customer = await catalog.sign_up_customer()
    too_much = await orders.place(customer, [{"offering_id": offering["id"], "quantity": 2}])
    assert (too_much.status, too_much.fields) == (422, ["lines[0].quantity"])
    order = (await orders.place(customer, [{"offering_id": offering["id"], "quantity": 1}])).expect(
        201
    )
    mine = await orders.fulfillment_of(owner, order["id"])
    (await orders.answer(owner, mine["id"], "accept")).expect(200)
    huge = await report(orders, owner, usage(order["id"], "u-huge", quantity=10**9))
    assert (huge.status, huge.fields) == (422, ["quantity"])
