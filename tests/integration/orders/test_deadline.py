"""The acceptance deadline: durable across a restart, fired once with two replicas, final."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import Orders, publish_joint_offering, start_orders
from tests.integration.orders.test_saga import fulfillment_events, order_events
from tests.support.clock import MovableClock
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEADLINE_SECONDS = 3.0


async def wait_until_cancelled(orders: Orders, token: str, order_id: str) -> dict[str, object]:
    async def cancelled() -> dict[str, object] | None:
        seen = (await orders.call("GET", f"/v1/orders/{order_id}", token=token)).expect(200)
        return seen if seen["status"] == "cancelled" else None

    return await wait_for(cancelled, timeout=30, message=f"{order_id} was never cancelled")


async def test_an_unanswered_order_is_cancelled_after_a_restart(
    infra: Infra, token_keys: TokenKeys, catalog: Catalog
) -> None:
    async with temporary_database(infra, "orders_deadline") as dsn:
        async with start_orders(
            catalog, token_keys, dsn, acceptance_deadline_seconds=DEADLINE_SECONDS
        ) as first:
            offering = await publish_joint_offering(catalog, first)
            customer = await catalog.sign_up_customer()
            order = (
                await first.place(customer, [{"offering_id": offering.id, "quantity": 1}])
            ).expect(201)
            isv = await first.fulfillment_of(offering.isv, order["id"])
            (await first.answer(offering.isv, isv["id"], "accept")).expect(200)
        accept_by = datetime.fromisoformat(order["accept_by"])
        # The deadline passes while no orders service runs at all.
        await wait_for(
            lambda: datetime.now(UTC) > accept_by, timeout=10, message="the deadline never came"
        )
        async with start_orders(
            catalog, token_keys, dsn, acceptance_deadline_seconds=DEADLINE_SECONDS
        ) as second:
            seen = await wait_until_cancelled(second, customer.token, order["id"])
            assert seen["cancel_reason"] == "deadline"
            # Read while the service runs: its relay publishes what the cancellation recorded.
            history = await order_events(catalog, order["id"], 2)
            assert [type(e.event) for e in history] == [
                o_events.OrderPlaced,
                o_events.OrderCancelled,
            ]
            events = await fulfillment_events(catalog, order["id"], 3 + 1 + 3)
    compensated = {e.key for e in events if isinstance(e.event, f_events.FulfillmentCancelled)}
    assert compensated == {p.id for p in offering.partners}


async def test_two_replicas_cancel_each_overdue_order_once(
    infra: Infra, token_keys: TokenKeys, catalog: Catalog
) -> None:
    async with (
        temporary_database(infra, "orders_replicas") as dsn,
        start_orders(catalog, token_keys, dsn, acceptance_deadline_seconds=DEADLINE_SECONDS) as one,
        start_orders(catalog, token_keys, dsn, acceptance_deadline_seconds=DEADLINE_SECONDS) as two,
    ):
        offering = await publish_joint_offering(catalog, one)
        customer = await catalog.sign_up_customer()
        placed = []
        for replica in (one, two, one, two, one, two):
            reply = await replica.place(customer, [{"offering_id": offering.id, "quantity": 1}])
            placed.append(reply.expect(201)["id"])
        for order_id in placed:
            await wait_until_cancelled(two, customer.token, order_id)
        async with one.database() as db:
            # The outbox is where a second cancellation would have been recorded.
            recorded = await db.fetch(
                "SELECT key, count(*) AS n FROM outbox WHERE event_type = $1 GROUP BY key",
                o_events.OrderCancelled.EVENT_TYPE,
            )
        assert {row["key"]: row["n"] for row in recorded} == dict.fromkeys(placed, 1)
        for order_id in placed:
            history = await order_events(catalog, order_id, 2)
            assert Counter(type(e.event) for e in history) == {
                o_events.OrderPlaced: 1,
                o_events.OrderCancelled: 1,
            }
            assert [e.envelope.sequence for e in history] == [1, 2]
            events = await fulfillment_events(catalog, order_id, 6)
            cancels = Counter(
                e.key for e in events if isinstance(e.event, f_events.FulfillmentCancelled)
            )
            assert cancels == dict.fromkeys((p.id for p in offering.partners), 1)


async def test_an_accept_after_the_deadline_never_confirms_the_order(
    infra: Infra, token_keys: TokenKeys, catalog: Catalog
) -> None:
    # The deadline's timer is not due to run again within the test, as when the
    # service was down or busy when the deadline passed.
    async with (
        temporary_database(infra, "orders_late") as dsn,
        start_orders(
            catalog, token_keys, dsn, acceptance_deadline_seconds=1, timer_poll_seconds=3600
        ) as orders,
    ):
        offering = await publish_joint_offering(catalog, orders)
        customer = await catalog.sign_up_customer()
        placed = await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])
        order = placed.expect(201)
        accept_by = datetime.fromisoformat(order["accept_by"])
        await wait_for(
            lambda: datetime.now(UTC) > accept_by, timeout=10, message="the deadline never came"
        )
        for partner in offering.partners:
            mine = await orders.fulfillment_of(partner, order["id"])
            late = await orders.answer(partner, mine["id"], "accept")
            assert late.status == 409
            assert "deadline" in late.body["detail"]
        seen = await orders.call("GET", f"/v1/orders/{order['id']}", token=customer.token)
        assert seen.expect(200)["status"] == "pending"


async def test_the_deadline_fires_by_the_services_one_clock(
    infra: Infra, token_keys: TokenKeys, catalog: Catalog
) -> None:
    # A 48-hour deadline passes in an instant when the service's clock is moved: the
    # timer loop finds the timer due and the handler cancels as of that same clock.
    clock = MovableClock()
    async with (
        temporary_database(infra, "orders_clock") as dsn,
        start_orders(catalog, token_keys, dsn, clock=clock, timer_poll_seconds=0.05) as orders,
    ):
        offering = await publish_joint_offering(catalog, orders)
        customer = await catalog.sign_up_customer()
        placed = await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])
        order = placed.expect(201)
        assert datetime.fromisoformat(order["placed_at"]) == clock.now
        clock.advance(timedelta(hours=48, seconds=1))
        seen = await wait_until_cancelled(orders, customer.token, order["id"])
    assert seen["cancel_reason"] == "deadline"
    assert datetime.fromisoformat(str(seen["changed_at"])) == clock.now
