"""The order saga as data: given an order and a command, the next order and its events."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.orders.domain import (
    Accept,
    Agreement,
    CancelByCustomer,
    Complete,
    DeadlinePassed,
    InvalidTransition,
    NewId,
    OfferingVersion,
    Order,
    Reject,
    ReportUsage,
    RequestedLine,
    Transition,
    charges_of,
    decide,
    price_order,
    record_usage,
)
from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from shared.contracts.catalog_offerings import ComponentState
from shared.contracts.pricing import OneTimePricing, SubscriptionPricing, UsagePricing
from shared.errors import RuleViolated

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=48)
ISV, MSP, SI = "prt_isv", "prt_msp", "prt_si"


def id_source() -> NewId:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(counter)}"


def requested_of(transition: Transition) -> dict[str, f_events.FulfillmentState]:
    return {
        e.fulfillment.partner_id: e.fulfillment
        for e in transition.fulfillment_events
        if isinstance(e, f_events.FulfillmentRequested)
    }


def three_partner_offering(
    offering_id: str = "off_joint", currency: str = "USD"
) -> OfferingVersion:
    """Owned by the managed-service provider, with an ISV's product and an integrator's work."""
    return OfferingVersion(
        offering_id=offering_id,
        version=3,
        owner_id=MSP,
        status="published",
        orderable=True,
        currency=currency,
        components=(
            ComponentState(
                partner_id=ISV, partner_kind="isv", role="isv", name="Database",
                pricing=SubscriptionPricing(unit_amount=5_000, interval="month"),
                agreement_id="agr_isv", share_bps=7_000,
            ),
            ComponentState(
                partner_id=MSP, partner_kind="managed_service", role="managed_service",
                name="Operations", pricing=OneTimePricing(unit_amount=2_000),
                agreement_id=None, share_bps=10_000,
            ),
            ComponentState(
                partner_id=SI, partner_kind="integrator", role="integrator", name="Set-up",
                pricing=OneTimePricing(unit_amount=1_000), agreement_id="agr_si", share_bps=9_000,
            ),
            ComponentState(
                partner_id=ISV, partner_kind="isv", role="isv", name="Storage",
                pricing=UsagePricing(unit_amount=3, unit="GB-hour"),
                agreement_id="agr_isv", share_bps=7_000,
            ),
        ),
    )  # fmt: skip


def place(
    *lines: RequestedLine,
    offerings: dict[str, OfferingVersion] | None = None,
    agreements: dict[str, Agreement] | None = None,
) -> Transition:
    known = offerings if offerings is not None else {"off_joint": three_partner_offering()}
    return price_order(
        order_id="ord_1",
        customer_id="cus_1",
        requested=lines or (RequestedLine("off_joint", 2),),
        offerings=known,
        agreements=agreements or {},
        now=NOW,
        acceptance_window=WINDOW,
        new_id=id_source(),
    )


def placed() -> Order:
    return place().order


def run(order: Order, *commands: Accept | Reject | Complete | CancelByCustomer) -> Transition:
    transition = Transition(order, (), ())
    for command in commands:
        transition = decide(transition.order, command, NOW)
    return transition


def confirmed() -> Order:
    return run(placed(), Accept(ISV), Accept(MSP), Accept(SI)).order


def statuses(order: Order) -> dict[str, str]:
    return {f.partner_id: f.status for f in order.fulfillments}


def test_placing_snapshots_prices_and_asks_each_partner_once() -> None:
    transition = place()
    order = transition.order
    assert order.status == "pending"
    assert order.currency == "USD"
    line = order.lines[0]
    # Subscription's first interval and one-time parts times quantity; usage later.
    assert [c.amount for c in line.components] == [10_000, 4_000, 2_000, 0]
    assert line.amount == order.total == 16_000
    assert (line.offering_version, line.owner_id) == (3, MSP)
    assert order.accept_by == NOW + WINDOW
    assert statuses(order) == {ISV: "requested", MSP: "requested", SI: "requested"}
    requests = transition.fulfillment_events
    assert all(isinstance(e, f_events.FulfillmentRequested) for e in requests)
    by_partner = requested_of(transition)
    assert [c.name for c in by_partner[ISV].components] == ["Database", "Storage"]
    assert by_partner[ISV].components[0].owner_id == MSP
    assert by_partner[ISV].accept_by == NOW + WINDOW
    [placed_event] = transition.order_events
    assert placed_event.sequence == 1
    assert isinstance(placed_event.event, o_events.OrderPlaced)


def test_two_lines_of_the_same_partners_still_ask_each_partner_once() -> None:
    transition = place(RequestedLine("off_joint", 1), RequestedLine("off_joint", 3))
    assert len(transition.order.fulfillments) == 3
    assert len(transition.fulfillment_events) == 3
    components = requested_of(transition)[SI].components
    assert [c.quantity for c in components] == [1, 3]


@pytest.mark.parametrize(
    ("offering", "message"),
    [
        (None, "unknown offering"),
        (replace(three_partner_offering(), status="retired"), "the offering is retired"),
        (replace(three_partner_offering(), orderable=False), "cannot be ordered"),
    ],
)
def test_an_offering_that_cannot_be_ordered_is_refused_naming_its_line(
    offering: OfferingVersion | None, message: str
) -> None:
    offerings = {"off_ok": three_partner_offering("off_ok")}
    if offering is not None:
        offerings["off_joint"] = offering
    with pytest.raises(RuleViolated) as refused:
        place(RequestedLine("off_ok", 1), RequestedLine("off_joint", 1), offerings=offerings)
    [violation] = refused.value.violations
    assert violation.field == "lines[1].offering_id"
    assert message in violation.message


def test_an_ended_agreement_known_locally_refuses_the_offering() -> None:
    revoked = {"agr_si": Agreement("agr_si", "revoked", None)}
    with pytest.raises(RuleViolated) as refused:
        place(agreements=revoked)
    assert refused.value.violations[0].field == "lines[0].offering_id"
    expired = {"agr_isv": Agreement("agr_isv", "active", NOW - timedelta(seconds=1))}
    with pytest.raises(RuleViolated):
        place(agreements=expired)


def test_one_order_has_one_currency() -> None:
    offerings = {
        "off_joint": three_partner_offering(),
        "off_eur": three_partner_offering("off_eur", "EUR"),
    }
    with pytest.raises(RuleViolated) as refused:
        place(RequestedLine("off_joint", 1), RequestedLine("off_eur", 1), offerings=offerings)
    assert refused.value.violations[0].field == "lines[1].offering_id"


@pytest.mark.parametrize("quantity", [0, -1, 100_001])
def test_quantities_are_bounded(quantity: int) -> None:
    with pytest.raises(RuleViolated) as refused:
        place(RequestedLine("off_joint", quantity))
    assert refused.value.violations[0].field == "lines[0].quantity"


def test_no_lines_is_refused() -> None:
    with pytest.raises(RuleViolated):
        price_order(
            order_id="ord_1", customer_id="cus_1", requested=[], offerings={}, agreements={},
            now=NOW, acceptance_window=WINDOW, new_id=lambda p: p,
        )  # fmt: skip


def test_all_accept_confirms_once_with_one_charge_per_priced_component() -> None:
    order = placed()
    first = decide(order, Accept(ISV), NOW)
    assert first.order.status == "pending"
    assert first.order_events == ()
    assert [type(e) for e in first.fulfillment_events] == [f_events.FulfillmentAccepted]
    second = decide(first.order, Accept(SI), NOW)
    assert second.order.status == "pending"
    last = decide(second.order, Accept(MSP), NOW)
    assert last.order.status == "confirmed"
    [event] = last.order_events
    assert event.sequence == 2
    assert isinstance(event.event, o_events.OrderConfirmed)
    charges = event.event.charges
    assert [(c.partner_id, c.amount, c.share_bps) for c in charges] == [
        (ISV, 10_000, 7_000),
        (MSP, 4_000, 10_000),
        (SI, 2_000, 9_000),
    ]
    assert charges[0].charge_id == f"ord_1.{order.lines[0].line_id}.0"
    assert all(c.owner_id == MSP and c.currency == "USD" for c in charges)
    assert sum(c.amount for c in charges) == order.total


def test_a_repeated_accept_is_refused_and_cannot_confirm_twice() -> None:
    order = run(placed(), Accept(ISV)).order
    with pytest.raises(InvalidTransition, match="fulfillment is accepted"):
        decide(order, Accept(ISV), NOW)
    order = confirmed()
    with pytest.raises(InvalidTransition, match="order is confirmed"):
        decide(order, Accept(ISV), NOW)


def test_all_complete_fulfils() -> None:
    order = confirmed()
    partial = run(order, Complete(ISV), Complete(SI))
    assert partial.order.status == "confirmed"
    done = decide(partial.order, Complete(MSP), NOW)
    assert done.order.status == "fulfilled"
    [event] = done.order_events
    assert (event.sequence, type(event.event)) == (3, o_events.OrderFulfilled)
    assert statuses(done.order) == {ISV: "completed", MSP: "completed", SI: "completed"}


def test_completing_before_confirmation_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="order is pending"):
        decide(run(placed(), Accept(ISV)).order, Complete(ISV), NOW)


def test_a_rejection_cancels_the_order_and_compensates_every_other_partner() -> None:
    order = run(placed(), Accept(ISV)).order
    transition = decide(order, Reject(SI, "no capacity"), NOW)
    assert transition.order.status == "cancelled"
    assert transition.order.cancel_reason == "rejected"
    assert statuses(transition.order) == {ISV: "cancelled", MSP: "cancelled", SI: "rejected"}
    events = transition.fulfillment_events
    assert isinstance(events[0], f_events.FulfillmentRejected)
    assert events[0].fulfillment.reason == "no capacity"
    compensated = {
        e.fulfillment.partner_id for e in events if isinstance(e, f_events.FulfillmentCancelled)
    }
    assert compensated == {ISV, MSP}
    [cancelled] = transition.order_events
    assert (cancelled.sequence, type(cancelled.event)) == (2, o_events.OrderCancelled)


def test_after_a_rejection_no_other_answer_changes_the_outcome() -> None:
    order = run(placed(), Reject(SI, "no")).order
    for command in (Accept(ISV), Reject(MSP, "no"), CancelByCustomer()):
        with pytest.raises(InvalidTransition, match="order is cancelled"):
            decide(order, command, NOW)


def test_the_deadline_cancels_a_pending_order_and_compensates_everyone_asked() -> None:
    order = run(placed(), Accept(MSP)).order
    with pytest.raises(InvalidTransition):
        decide(order, DeadlinePassed(), NOW + WINDOW - timedelta(seconds=1))
    transition = decide(order, DeadlinePassed(), NOW + WINDOW)
    assert transition.order.status == "cancelled"
    assert transition.order.cancel_reason == "deadline"
    assert len(transition.fulfillment_events) == 3
    assert all(isinstance(e, f_events.FulfillmentCancelled) for e in transition.fulfillment_events)


def test_an_accept_once_the_deadline_passed_is_refused_even_before_the_timer_fires() -> None:
    order = run(placed(), Accept(ISV), Accept(MSP)).order
    with pytest.raises(InvalidTransition, match="pending past its acceptance deadline"):
        decide(order, Accept(SI), NOW + WINDOW)
    assert decide(order, Accept(SI), NOW + WINDOW - timedelta(seconds=1)).order.status == (
        "confirmed"
    )


def test_the_deadline_leaves_a_confirmed_order_alone() -> None:
    with pytest.raises(InvalidTransition, match="confirmed"):
        decide(confirmed(), DeadlinePassed(), NOW + 2 * WINDOW)


def test_a_customer_cancel_of_a_pending_order_compensates_without_a_refund() -> None:
    transition = decide(placed(), CancelByCustomer(), NOW)
    assert transition.order.cancel_reason == "customer"
    assert [type(e.event) for e in transition.order_events] == [o_events.OrderCancelled]
    assert len(transition.fulfillment_events) == 3


def test_cancelling_a_confirmed_order_refunds_every_charge_made_usage_included() -> None:
    order = confirmed()
    used = record_usage(
        order, ReportUsage("u-1", ISV, None, 10, NOW), NOW + timedelta(minutes=1)
    ).order
    transition = decide(run(used, Complete(ISV)).order, CancelByCustomer(), NOW)
    assert statuses(transition.order) == {ISV: "cancelled", MSP: "cancelled", SI: "cancelled"}
    kinds = [(e.sequence, type(e.event)) for e in transition.order_events]
    assert kinds == [(4, o_events.OrderCancelled), (5, o_events.OrderRefunded)]
    refunded = transition.order_events[1].event
    assert isinstance(refunded, o_events.OrderRefunded)
    charged = {c.charge_id: c.amount for c in charges_of(order)}
    charged[f"usage.{ISV}.u-1"] = 30
    assert {r.charge_id: r.amount for r in refunded.refunds} == charged
    assert transition.order.sequence == 5


def test_a_fulfilled_order_can_no_longer_be_cancelled() -> None:
    order = run(confirmed(), Complete(ISV), Complete(MSP), Complete(SI)).order
    with pytest.raises(InvalidTransition, match="order is fulfilled"):
        decide(order, CancelByCustomer(), NOW)


def test_usage_is_charged_to_the_usage_priced_component() -> None:
    transition = record_usage(confirmed(), ReportUsage("u-1", ISV, None, 7, NOW), NOW)
    [event] = transition.order_events
    assert event.sequence == 3
    recorded = event.event
    assert isinstance(recorded, o_events.UsageRecorded)
    assert recorded.charge.kind == "usage"
    assert (recorded.charge.amount, recorded.charge.component_index) == (21, 3)
    assert (recorded.unit, recorded.charge.share_bps, recorded.charge.owner_id) == (
        "GB-hour",
        7_000,
        MSP,
    )


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (ReportUsage("u", SI, None, 1, NOW), "order_id"),  # SI has no usage component
        (ReportUsage("u", SI, ISV, 1, NOW), "component_partner_id"),  # not SI's to report
        (ReportUsage("u", "prt_other", None, 1, NOW), "order_id"),
        (ReportUsage("u", ISV, None, 0, NOW), "quantity"),
        (ReportUsage("u", ISV, None, 1, NOW + timedelta(hours=1)), "occurred_at"),
        (ReportUsage("u", ISV, None, 1, NOW - timedelta(seconds=1)), "occurred_at"),
    ],
)
def test_usage_that_is_not_the_partners_to_report_is_refused(
    report: ReportUsage, field: str
) -> None:
    with pytest.raises(RuleViolated) as refused:
        record_usage(confirmed(), report, NOW)
    assert refused.value.violations[0].field == field


def test_the_owner_may_report_usage_for_a_component_of_its_line() -> None:
    transition = record_usage(confirmed(), ReportUsage("u", MSP, ISV, 1, NOW), NOW)
    recorded = transition.order_events[0].event
    assert isinstance(recorded, o_events.UsageRecorded)
    assert recorded.charge.partner_id == ISV


def test_usage_of_an_order_not_confirmed_is_refused() -> None:
    with pytest.raises(RuleViolated, match="pending"):
        record_usage(placed(), ReportUsage("u", ISV, None, 1, NOW), NOW)
