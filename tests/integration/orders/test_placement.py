"""Placing orders from the local copy of the catalog; cancel and refund; usage metering."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from services.orders import handlers
from services.orders.domain import RequestedLine
from services.orders.handlers import ACCEPTANCE_DEADLINE
from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import JointOffering, Orders, publish_joint_offering
from tests.integration.orders.test_saga import order_events
from tests.integration.orders.test_usage import OFFERING
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def wait_until_local(orders: Orders, offering_id: str, condition: str) -> None:
    """The local copy's current version of the offering satisfies ``condition`` (SQL)."""

    async def holds() -> bool:
        async with orders.database() as db:
            found = await db.fetchval(
                f"SELECT {condition} FROM offering_versions WHERE offering_id = $1"
                " ORDER BY version DESC LIMIT 1",
                offering_id,
            )
        return bool(found)

    await wait_for(holds, timeout=20, message=f"{offering_id}: {condition} never held")


async def confirmed_order(
    orders: Orders, catalog: Catalog, offering: JointOffering
) -> tuple[Any, dict[str, Any]]:
    customer = await catalog.sign_up_customer()
    order = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(
        201
    )
    for partner in offering.partners:
        mine = await orders.fulfillment_of(partner, order["id"])
        (await orders.answer(partner, mine["id"], "accept")).expect(200)
    return customer, order


async def test_lines_that_cannot_be_ordered_are_named(catalog: Catalog, orders: Orders) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    unknown = await orders.place(
        customer,
        [{"offering_id": offering.id, "quantity": 1}, {"offering_id": "off_nope", "quantity": 1}],
    )
    assert unknown.status == 422
    assert unknown.fields == ["lines[1].offering_id"]
    assert (await orders.place(customer, [{"offering_id": offering.id, "quantity": 0}])).fields == [
        "lines[0].quantity"
    ]
    assert (await orders.place(customer, [])).status == 422
    euro = await publish_joint_offering(catalog, orders, currency="EUR")
    mixed = await orders.place(
        customer,
        [{"offering_id": offering.id, "quantity": 1}, {"offering_id": euro.id, "quantity": 1}],
    )
    assert (mixed.status, mixed.fields) == (422, ["lines[1].offering_id"])
    partner_tries = await orders.call(
        "POST", "/v1/orders", token=offering.msp.token, body={"lines": []}
    )
    assert partner_tries.status == 403
    assert (await orders.call("POST", "/v1/orders", body={"lines": []})).status == 401


async def test_retired_and_revoked_offerings_cannot_be_ordered(
    catalog: Catalog, orders: Orders
) -> None:
    customer = await catalog.sign_up_customer()
    retired = await publish_joint_offering(catalog, orders)
    reply = await catalog.call(
        "POST", f"/v1/offerings/{retired.id}/retire", token=retired.msp.token
    )
    reply.expect(200)
    await wait_until_local(orders, retired.id, "status = 'retired'")
    refused = await orders.place(customer, [{"offering_id": retired.id, "quantity": 1}])
    assert (refused.status, refused.fields) == (422, ["lines[0].offering_id"])
    assert "retired" in refused.body["errors"][0]["message"]

    revoked = await publish_joint_offering(catalog, orders)
    agreements = await catalog.call("GET", "/v1/agreements", token=revoked.integrator.token)
    [terms] = agreements.expect(200)["items"]
    await catalog.call(
        "POST", f"/v1/agreements/{terms['id']}/revoke", token=revoked.integrator.token
    )
    await wait_until_local(orders, revoked.id, "NOT orderable")
    refused = await orders.place(customer, [{"offering_id": revoked.id, "quantity": 1}])
    assert (refused.status, refused.fields) == (422, ["lines[0].offering_id"])


async def test_an_order_keeps_the_version_it_bought(catalog: Catalog, orders: Orders) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    first = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(
        201
    )
    changed = await catalog.call(
        "PATCH",
        f"/v1/offerings/{offering.id}",
        token=offering.msp.token,
        body={"name": "A new name for version two"},
    )
    assert changed.expect(200)["version"] == 2
    await orders.wait_until_known(offering.id, version=2)
    second = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(
        201
    )
    assert [first["lines"][0]["offering_version"], second["lines"][0]["offering_version"]] == [1, 2]
    again = await orders.call("GET", f"/v1/orders/{first['id']}", token=customer.token)
    assert again.expect(200)["lines"][0]["offering_version"] == 1


async def test_cancelling_a_confirmed_order_refunds_what_was_charged(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders, usage=True)
    customer, order = await confirmed_order(orders, catalog, offering)
    usage = {
        "usage_id": "u-1",
        "order_id": order["id"],
        "quantity": 100,
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    (await orders.call("POST", "/v1/usage", token=offering.isv.token, body=usage)).expect(202)
    cancelled = await orders.call("POST", f"/v1/orders/{order['id']}/cancel", token=customer.token)
    assert cancelled.expect(200)["status"] == "cancelled"
    again = await orders.call("POST", f"/v1/orders/{order['id']}/cancel", token=customer.token)
    assert again.status == 409
    assert "cancelled" in again.body["detail"]
    history = await order_events(catalog, order["id"], 5)
    kinds = [(e.envelope.sequence, type(e.event)) for e in history]
    assert kinds == [
        (1, o_events.OrderPlaced),
        (2, o_events.OrderConfirmed),
        (3, o_events.UsageRecorded),
        (4, o_events.OrderCancelled),
        (5, o_events.OrderRefunded),
    ]
    confirmed, recorded, refunded = history[1].event, history[2].event, history[4].event
    assert isinstance(confirmed, o_events.OrderConfirmed)
    assert isinstance(recorded, o_events.UsageRecorded)
    assert isinstance(refunded, o_events.OrderRefunded)
    charged = {c.charge_id: c.amount for c in [*confirmed.charges, recorded.charge]}
    assert {r.charge_id: r.amount for r in refunded.refunds} == charged
    assert recorded.charge.amount == 300


async def test_a_fulfilled_order_cannot_be_cancelled(catalog: Catalog, orders: Orders) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer, order = await confirmed_order(orders, catalog, offering)
    for partner in offering.partners:
        mine = await orders.fulfillment_of(partner, order["id"])
        (await orders.answer(partner, mine["id"], "complete")).expect(200)
    refused = await orders.call("POST", f"/v1/orders/{order['id']}/cancel", token=customer.token)
    assert refused.status == 409
    assert refused.body["detail"].startswith("the order is fulfilled")


async def test_usage_is_counted_once_and_only_for_what_is_the_partners(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders, usage=True)
    customer = await catalog.sign_up_customer()
    pending = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])).expect(
        201
    )

    def usage(order_id: str, **changes: Any) -> dict[str, Any]:
        return {
            "usage_id": "u-7",
            "order_id": order_id,
            "quantity": 5,
            "occurred_at": datetime.now(UTC).isoformat(),
            **changes,
        }

    async def report(partner_token: str, body: dict[str, Any]) -> Any:
        return await orders.call("POST", "/v1/usage", token=partner_token, body=body)

    not_yet = await report(offering.isv.token, usage(pending["id"]))
    assert (not_yet.status, not_yet.fields) == (422, ["order_id"])
    _, order = await confirmed_order(orders, catalog, offering)
    for _ in range(3):
        (await report(offering.isv.token, usage(order["id"]))).expect(202)
    async with orders.database() as db:
        counted = await db.fetchval(
            "SELECT count(*) FROM usage_records WHERE order_id = $1", order["id"]
        )
    assert counted == 1
    now = datetime.now(UTC)
    refused = {
        "not usage-priced": await report(offering.integrator.token, usage(order["id"])),
        "another's part": await report(
            offering.integrator.token, usage(order["id"], component_partner_id=offering.isv.id)
        ),
        "in the future": await report(
            offering.isv.token,
            usage(order["id"], usage_id="u-8", occurred_at=(now + timedelta(hours=1)).isoformat()),
        ),
        "long ago": await report(
            offering.isv.token,
            usage(order["id"], usage_id="u-9", occurred_at=(now - timedelta(days=90)).isoformat()),
        ),
        "unknown order": await report(offering.isv.token, usage("ord_nope")),
    }
    assert {why: r.status for why, r in refused.items()} == dict.fromkeys(refused, 422)
    assert refused["in the future"].fields == ["occurred_at"]
    assert refused["another's part"].fields == ["component_partner_id"]


async def test_a_token_verified_before_is_refused_once_rotated(
    catalog: Catalog, orders: Orders
) -> None:
    """Orders remembers verified tokens; a rotation still refuses the old one."""
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    line = [{"offering_id": offering.id, "quantity": 1}]
    for _ in range(2):  # the second is answered from the verified-token cache
        (await orders.place(customer, line)).expect(201)
    rotated = await catalog.call(
        "POST", f"/v1/customers/{customer.id}/rotate-token", token=customer.token
    )
    renewed = dataclasses.replace(customer, token=rotated.expect(200)["token"])

    async def refused() -> bool:
        return (await orders.place(customer, line)).status == 401

    await wait_for(refused, timeout=20, message="orders kept accepting the superseded token")
    (await orders.place(renewed, line)).expect(201)
    assert (await orders.place(customer, line)).status == 401


async def test_a_placement_writes_its_rows_events_and_deadline_together(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    order = (await orders.place(customer, [{"offering_id": offering.id, "quantity": 2}])).expect(
        201
    )
    async with orders.database() as db:
        placed = await db.fetchrow("SELECT * FROM orders WHERE id = $1", order["id"])
        lines = await db.fetch("SELECT * FROM order_lines WHERE order_id = $1", order["id"])
        fulfillments = await db.fetch(
            "SELECT * FROM fulfillments WHERE order_id = $1 ORDER BY partner_id", order["id"]
        )
        events = await db.fetch(
            # The partners are this test's own: every event keyed by them is this order's.
            "SELECT topic, key, event_type, sequence FROM outbox"
            " WHERE key = $1 OR key = ANY($2::text[]) ORDER BY id",
            order["id"],
            [p.id for p in offering.partners],
        )
        timer = await db.fetchrow(
            "SELECT due_at, attempts FROM timers WHERE kind = $1 AND key = $2",
            ACCEPTANCE_DEADLINE,
            order["id"],
        )
    assert placed is not None
    assert (placed["status"], placed["sequence"], placed["total"]) == ("pending", 1, 16_000)
    assert [(line["position"], line["quantity"], line["amount"]) for line in lines] == [
        (0, 2, 16_000)
    ]
    assert sorted((f["partner_id"], f["status"]) for f in fulfillments) == sorted(
        (p.id, "requested") for p in offering.partners
    )
    # The order's event first, numbered 1; then one request per partner, keyed by partner.
    assert [(e["topic"], e["key"], e["event_type"], e["sequence"]) for e in events] == [
        (o_events.TOPIC.name, order["id"], o_events.OrderPlaced.EVENT_TYPE, 1),
        *[
            (f_events.TOPIC.name, f["partner_id"], f_events.FulfillmentRequested.EVENT_TYPE, None)
            for f in order["fulfillments"]
        ],
    ]
    assert timer is not None
    assert timer["attempts"] == 0
    assert timer["due_at"] == placed["accept_by"]


async def test_a_placement_failing_in_its_last_write_leaves_nothing_behind(
    migrated_orders_db: str,
) -> None:
    """A placement opens no transaction: its one statement must commit whole or not at all."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        await conn.execute(
            "INSERT INTO offering_versions (offering_id, version, owner_id, status, orderable,"
            " currency, components, changed_at) VALUES ($1, $2, $3, 'published', true, $4,"
            " $5::jsonb, now())",
            OFFERING.offering_id,
            OFFERING.version,
            OFFERING.owner_id,
            OFFERING.currency,
            msgspec.json.encode(OFFERING.components).decode(),
        )
        # The acceptance timer is the statement's last part: the database refuses it.
        await conn.execute(
            "CREATE FUNCTION refuse_timer() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'no timers today'; END $$;"
            " CREATE TRIGGER refuse_timer BEFORE INSERT ON timers"
            " FOR EACH ROW EXECUTE FUNCTION refuse_timer()"
        )
        assert not conn.is_in_transaction()
        with pytest.raises(asyncpg.RaiseError, match="no timers today"):
            await handlers.place_order(
                conn,
                customer_id="cus_halfplaced",
                lines=[RequestedLine(OFFERING.offering_id, 1)],
                now=datetime.now(UTC),
                acceptance_window=timedelta(hours=48),
            )
        left = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("orders", "order_lines", "fulfillments", "outbox", "timers")
        }
        assert left == dict.fromkeys(left, 0)
    finally:
        await conn.close()
