"""Orders: pricing an order from the catalog's terms, and the fulfilment saga.

Everything here is pure: given an order's state and a command, a function
returns the order's next state and the events that record the change, or
refuses.  Handlers load the state, call these, and store what comes back
(if the state is still what they loaded; else they load and call again);
tests check the same functions as data.

The saga decides from the set of distinct partners' fulfilment statuses held
in the order, never from a count of messages, so a redelivered answer can
never confirm an order twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from shared.contracts import fulfillments as fulfillment_events
from shared.contracts import orders as order_events
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.catalog_agreements import AgreementStatus
from shared.contracts.catalog_offerings import ComponentState
from shared.contracts.envelope import Event
from shared.contracts.fulfillments import FulfillmentStatus
from shared.contracts.orders import CancelReason, OrderStatus
from shared.contracts.pricing import Pricing, UsagePricing
from shared.errors import Conflict, RuleViolated, Violation
from shared.money import MAX_AMOUNT

MAX_LINES = 50
MAX_QUANTITY = 100_000
# A line or a usage charge carries at most the money cap every service shares
# (shared.money.MAX_AMOUNT), so an order's total stays far inside 64 bits.
MAX_USAGE_QUANTITY = 10**9
# What a partner reporting usage for an order it has no part in is told, word
# for word as for an order that does not exist: the answer leaks nothing.
NOT_YOUR_ORDER = "no such order of yours"
# Usage is reported as it happens: a little clock skew ahead, at most this far back.
USAGE_FUTURE_TOLERANCE = timedelta(minutes=5)
USAGE_MAX_AGE = timedelta(days=35)

NewId = Callable[[str], str]


@dataclass(frozen=True)
class OfferingVersion:
    """One published version of an offering, as the local copy of the catalog holds it."""

    offering_id: str
    version: int
    owner_id: str
    status: str  # "published" or "retired"
    orderable: bool
    currency: str
    components: tuple[ComponentState, ...]


@dataclass(frozen=True)
class Agreement:
    agreement_id: str
    status: AgreementStatus
    expires_at: datetime | None

    def active_at(self, now: datetime) -> bool:
        return self.status == "active" and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class RequestedLine:
    offering_id: str
    quantity: int


@dataclass(frozen=True)
class OrderedComponent:
    component_index: int
    partner_id: str
    role: PartnerKind
    name: str
    pricing: Pricing
    agreement_id: str | None
    share_bps: int
    amount: int


@dataclass(frozen=True)
class Line:
    line_id: str
    offering_id: str
    offering_version: int
    owner_id: str
    quantity: int
    amount: int
    components: tuple[OrderedComponent, ...]


@dataclass(frozen=True)
class Fulfillment:
    fulfillment_id: str
    partner_id: str
    role: PartnerKind
    status: FulfillmentStatus
    changed_at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class UsageCharge:
    """A usage charge already made: a confirmed order's cancel refunds it too."""

    charge_id: str
    amount: int


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    status: OrderStatus
    currency: str
    total: int
    lines: tuple[Line, ...]
    fulfillments: tuple[Fulfillment, ...]
    placed_at: datetime
    accept_by: datetime
    changed_at: datetime
    sequence: int  # of the last event recorded about this order
    cancel_reason: CancelReason | None = None
    usage_charges: tuple[UsageCharge, ...] = ()

    def fulfillment_of(self, partner_id: str) -> Fulfillment | None:
        for fulfillment in self.fulfillments:
            if fulfillment.partner_id == partner_id:
                return fulfillment
        return None

    @property
    def owner_ids(self) -> frozenset[str]:
        return frozenset(line.owner_id for line in self.lines)


@dataclass(frozen=True)
class Sequenced:
    """An orders-topic event with its place in the order's own sequence."""

    sequence: int
    event: Event


FulfillmentEvent = (
    fulfillment_events.FulfillmentRequested
    | fulfillment_events.FulfillmentAccepted
    | fulfillment_events.FulfillmentRejected
    | fulfillment_events.FulfillmentCompleted
    | fulfillment_events.FulfillmentCancelled
)


@dataclass(frozen=True)
class Transition:
    order: Order
    order_events: tuple[Sequenced, ...]
    fulfillment_events: tuple[FulfillmentEvent, ...]


class InvalidTransition(Conflict):
    """Refused because of the state the order or fulfilment is in; names that state."""


@dataclass(frozen=True)
class Accept:
    partner_id: str


@dataclass(frozen=True)
class Reject:
    partner_id: str
    reason: str


@dataclass(frozen=True)
class Complete:
    partner_id: str


@dataclass(frozen=True)
class CancelByCustomer:
    pass


@dataclass(frozen=True)
class DeadlinePassed:
    pass


Command = Accept | Reject | Complete | CancelByCustomer | DeadlinePassed


def price_order(
    *,
    order_id: str,
    customer_id: str,
    requested: Sequence[RequestedLine],
    offerings: Mapping[str, OfferingVersion],
    agreements: Mapping[str, Agreement],
    now: datetime,
    acceptance_window: timedelta,
    new_id: NewId,
) -> Transition:
    """Check every line against the local catalog, snapshot its terms, fan out per partner.

    ``offerings`` holds the current version of each requested offering that
    the local catalog knows; ``agreements`` those it knows by id.  An agreement
    not (yet) known locally is vouched for by the offering's own orderability.
    """
    if not requested:
        raise RuleViolated.single("lines", "an order needs at least one line")
    if len(requested) > MAX_LINES:
        raise RuleViolated.single("lines", f"at most {MAX_LINES} lines")
    violations: list[Violation] = []
    currency: str | None = None
    lines: list[Line] = []
    for index, wanted in enumerate(requested):
        where = f"lines[{index}]"
        offering = offerings.get(wanted.offering_id)
        problem = _unorderable(offering, agreements, now)
        if offering is None or problem is not None:
            violations.append(Violation(f"{where}.offering_id", problem or "unknown offering"))
            continue
        if not 1 <= wanted.quantity <= MAX_QUANTITY:
            violations.append(Violation(f"{where}.quantity", f"must be 1 to {MAX_QUANTITY}"))
            continue
        if currency is None:
            currency = offering.currency
        elif offering.currency != currency:
            violations.append(
                Violation(
                    f"{where}.offering_id",
                    f"priced in {offering.currency}; this order is in {currency}"
                    " (order offerings of other currencies separately)",
                )
            )
            continue
        line = _line(new_id("lin"), offering, wanted.quantity)
        if line.amount > MAX_AMOUNT:
            violations.append(
                Violation(f"{where}.quantity", f"the line would cost more than {MAX_AMOUNT}")
            )
            continue
        lines.append(line)
    if violations:
        raise RuleViolated(violations)
    assert currency is not None
    total = sum(line.amount for line in lines)
    accept_by = now + acceptance_window
    fulfillments = _one_fulfillment_per_partner(lines, new_id, now)
    order = Order(
        order_id=order_id,
        customer_id=customer_id,
        status="pending",
        currency=currency,
        total=total,
        lines=tuple(lines),
        fulfillments=fulfillments,
        placed_at=now,
        accept_by=accept_by,
        changed_at=now,
        sequence=1,
    )
    requests = tuple(
        fulfillment_events.FulfillmentRequested(fulfillment=fulfillment_state(order, f))
        for f in fulfillments
    )
    placed = Sequenced(1, order_events.OrderPlaced(order=order_state(order)))
    return Transition(order, (placed,), requests)


def _unorderable(
    offering: OfferingVersion | None, agreements: Mapping[str, Agreement], now: datetime
) -> str | None:
    if offering is None:
        return "unknown offering"
    if offering.status != "published":
        return f"the offering is {offering.status}"
    if not offering.orderable:
        return "the offering cannot be ordered now (an agreement it depends on ended)"
    for component in offering.components:
        if component.agreement_id is None:
            continue
        agreement = agreements.get(component.agreement_id)
        if agreement is not None and not agreement.active_at(now):
            return f"agreement {component.agreement_id} is no longer active"
    return None


def component_amount(pricing: Pricing, quantity: int) -> int:
    """Charged at confirmation: one-time in full, a subscription's first interval; usage later."""
    if isinstance(pricing, UsagePricing):
        return 0
    return pricing.unit_amount * quantity


def _line(line_id: str, offering: OfferingVersion, quantity: int) -> Line:
    components = tuple(
        OrderedComponent(
            component_index=index,
            partner_id=c.partner_id,
            role=c.role,
            name=c.name,
            pricing=c.pricing,
            agreement_id=c.agreement_id,
            share_bps=c.share_bps,
            amount=component_amount(c.pricing, quantity),
        )
        for index, c in enumerate(offering.components)
    )
    return Line(
        line_id=line_id,
        offering_id=offering.offering_id,
        offering_version=offering.version,
        owner_id=offering.owner_id,
        quantity=quantity,
        amount=sum(c.amount for c in components),
        components=components,
    )


def _one_fulfillment_per_partner(
    lines: Sequence[Line], new_id: NewId, now: datetime
) -> tuple[Fulfillment, ...]:
    roles: dict[str, PartnerKind] = {}
    for line in lines:
        for component in line.components:
            # A partner in several roles is asked once; the first role names it.
            roles.setdefault(component.partner_id, component.role)
    return tuple(
        Fulfillment(new_id("ful"), partner_id, role, "requested", now)
        for partner_id, role in roles.items()
    )


def decide(order: Order, command: Command, now: datetime) -> Transition:
    """The saga: the next state of ``order`` under ``command``, with its events."""
    match command:
        case Accept(partner_id):
            return _accept(order, partner_id, now)
        case Reject(partner_id, reason):
            return _reject(order, partner_id, reason, now)
        case Complete(partner_id):
            return _complete(order, partner_id, now)
        case CancelByCustomer():
            if order.status not in ("pending", "confirmed"):
                raise InvalidTransition(
                    f"the order is {order.status}; it can no longer be cancelled"
                )
            return _cancel(order, "customer", now)
        case DeadlinePassed():
            if order.status != "pending" or now < order.accept_by:
                raise InvalidTransition(f"the order is {order.status}; no deadline applies")
            return _cancel(order, "deadline", now)


def _own_fulfillment(order: Order, partner_id: str) -> Fulfillment:
    fulfillment = order.fulfillment_of(partner_id)
    if fulfillment is None:
        # Handlers find fulfilments by partner, so this is a caller's mistake.
        raise InvalidTransition(f"partner {partner_id} has no part in order {order.order_id}")
    return fulfillment


def _accept(order: Order, partner_id: str, now: datetime) -> Transition:
    mine = _own_fulfillment(order, partner_id)
    if order.status != "pending":
        raise InvalidTransition(f"the order is {order.status}; it can no longer be accepted")
    if now >= order.accept_by:
        # The deadline's timer may not have fired yet (it polls; the service may
        # have been down): a late accept must not confirm the order regardless.
        raise InvalidTransition(
            f"the order is pending past its acceptance deadline ({order.accept_by.isoformat()});"
            " it can no longer be accepted"
        )
    if mine.status != "requested":
        raise InvalidTransition(f"the fulfillment is {mine.status}; it can no longer be accepted")
    accepted = replace(mine, status="accepted", changed_at=now)
    order = _with_fulfillment(order, accepted, now)
    answered = fulfillment_events.FulfillmentAccepted(
        fulfillment=fulfillment_state(order, accepted)
    )
    if {f.status for f in order.fulfillments} != {"accepted"}:
        return Transition(order, (), (answered,))
    order = replace(order, status="confirmed", sequence=order.sequence + 1)
    confirmed = order_events.OrderConfirmed(order=order_state(order), charges=charges_of(order))
    return Transition(order, (Sequenced(order.sequence, confirmed),), (answered,))


def _complete(order: Order, partner_id: str, now: datetime) -> Transition:
    mine = _own_fulfillment(order, partner_id)
    if order.status != "confirmed":
        raise InvalidTransition(f"the order is {order.status}; only a confirmed order is delivered")
    if mine.status != "accepted":
        raise InvalidTransition(f"the fulfillment is {mine.status}; it cannot be completed")
    completed = replace(mine, status="completed", changed_at=now)
    order = _with_fulfillment(order, completed, now)
    delivered = fulfillment_events.FulfillmentCompleted(
        fulfillment=fulfillment_state(order, completed)
    )
    if {f.status for f in order.fulfillments} != {"completed"}:
        return Transition(order, (), (delivered,))
    order = replace(order, status="fulfilled", sequence=order.sequence + 1)
    fulfilled = order_events.OrderFulfilled(order=order_state(order))
    return Transition(order, (Sequenced(order.sequence, fulfilled),), (delivered,))


def _reject(order: Order, partner_id: str, reason: str, now: datetime) -> Transition:
    mine = _own_fulfillment(order, partner_id)
    if order.status != "pending":
        raise InvalidTransition(f"the order is {order.status}; it can no longer be rejected")
    if mine.status != "requested":
        raise InvalidTransition(f"the fulfillment is {mine.status}; it can no longer be rejected")
    rejected = replace(mine, status="rejected", changed_at=now, reason=reason)
    order = _with_fulfillment(order, rejected, now)
    refusal = fulfillment_events.FulfillmentRejected(fulfillment=fulfillment_state(order, rejected))
    cancelled = _cancel(order, "rejected", now)
    return replace(cancelled, fulfillment_events=(refusal, *cancelled.fulfillment_events))


def _cancel(order: Order, reason: CancelReason, now: datetime) -> Transition:
    """Cancel the order and compensate every partner still bound to deliver."""
    was_confirmed = order.status == "confirmed"
    fulfillments: list[Fulfillment] = []
    compensated: list[Fulfillment] = []
    for fulfillment in order.fulfillments:
        if fulfillment.status in ("requested", "accepted", "completed"):
            fulfillment = replace(fulfillment, status="cancelled", changed_at=now, reason=reason)
            compensated.append(fulfillment)
        fulfillments.append(fulfillment)
    order = replace(
        order,
        status="cancelled",
        cancel_reason=reason,
        changed_at=now,
        fulfillments=tuple(fulfillments),
        sequence=order.sequence + 1,
    )
    compensations: list[FulfillmentEvent] = [
        fulfillment_events.FulfillmentCancelled(fulfillment=fulfillment_state(order, f))
        for f in compensated
    ]
    sequenced = [Sequenced(order.sequence, order_events.OrderCancelled(order=order_state(order)))]
    if was_confirmed:
        refunds = [
            order_events.Refund(
                refund_id=f"{charge_id}.refund",
                charge_id=charge_id,
                amount=amount,
                currency=order.currency,
            )
            for charge_id, amount in _charges_made(order)
        ]
        if refunds:
            order = replace(order, sequence=order.sequence + 1)
            refunded = order_events.OrderRefunded(
                order_id=order.order_id,
                customer_id=order.customer_id,
                currency=order.currency,
                refunds=refunds,
            )
            sequenced.append(Sequenced(order.sequence, refunded))
    return Transition(order, tuple(sequenced), tuple(compensations))


def _charges_made(order: Order) -> list[tuple[str, int]]:
    made = [(charge.charge_id, charge.amount) for charge in charges_of(order)]
    made += [(usage.charge_id, usage.amount) for usage in order.usage_charges if usage.amount > 0]
    return made


def _with_fulfillment(order: Order, changed: Fulfillment, now: datetime) -> Order:
    return replace(
        order,
        changed_at=now,
        fulfillments=tuple(
            changed if f.fulfillment_id == changed.fulfillment_id else f for f in order.fulfillments
        ),
    )


def charge_id_of(order_id: str, line_id: str, component_index: int) -> str:
    return f"{order_id}.{line_id}.{component_index}"


def charges_of(order: Order) -> list[order_events.Charge]:
    """What the customer owes at confirmation: one charge per component with an amount."""
    return [
        order_events.Charge(
            charge_id=charge_id_of(order.order_id, line.line_id, component.component_index),
            kind="order",
            order_id=order.order_id,
            line_id=line.line_id,
            offering_id=line.offering_id,
            component_index=component.component_index,
            owner_id=line.owner_id,
            partner_id=component.partner_id,
            role=component.role,
            agreement_id=component.agreement_id,
            share_bps=component.share_bps,
            amount=component.amount,
            currency=order.currency,
        )
        for line in order.lines
        for component in line.components
        if component.amount > 0
    ]


@dataclass(frozen=True)
class ReportUsage:
    usage_id: str
    partner_id: str
    component_partner_id: str | None
    quantity: int
    occurred_at: datetime


def record_usage(order: Order, report: ReportUsage, now: datetime) -> Transition:
    """Charge a usage-priced component of a confirmed order for what was used."""
    partner_id = report.component_partner_id or report.partner_id
    # The accountable owner may report for the components of its own lines.
    reporter_may = partner_id == report.partner_id or report.partner_id in order.owner_ids
    takes_part = report.partner_id in order.owner_ids or order.fulfillment_of(report.partner_id)
    if not takes_part:
        # Answered exactly as an order that does not exist.
        raise RuleViolated.single("order_id", NOT_YOUR_ORDER)
    if not reporter_may or order.fulfillment_of(partner_id) is None:
        field = "component_partner_id" if report.component_partner_id else "order_id"
        raise RuleViolated.single(field, "no component of this order is yours to report for")
    if order.status not in ("confirmed", "fulfilled"):
        raise RuleViolated.single(
            "order_id", f"the order is {order.status}; usage is recorded once it is confirmed"
        )
    found = _usage_component(order, partner_id, report.partner_id)
    if found is None:
        raise RuleViolated.single("order_id", "no usage-priced component of this order is yours")
    line, component = found
    if not 1 <= report.quantity <= MAX_USAGE_QUANTITY:
        raise RuleViolated.single("quantity", f"must be 1 to {MAX_USAGE_QUANTITY}")
    if report.occurred_at > now + USAGE_FUTURE_TOLERANCE:
        raise RuleViolated.single("occurred_at", "is in the future")
    if report.occurred_at < max(order.placed_at, now - USAGE_MAX_AGE):
        raise RuleViolated.single(
            "occurred_at", "is before the order or too long ago to be charged"
        )
    assert isinstance(component.pricing, UsagePricing)
    amount = component.pricing.unit_amount * report.quantity
    if amount > MAX_AMOUNT:
        raise RuleViolated.single("quantity", "the charge is larger than allowed")
    charge = order_events.Charge(
        charge_id=usage_charge_id(report.partner_id, report.usage_id),
        kind="usage",
        order_id=order.order_id,
        line_id=line.line_id,
        offering_id=line.offering_id,
        component_index=component.component_index,
        owner_id=line.owner_id,
        partner_id=component.partner_id,
        role=component.role,
        agreement_id=component.agreement_id,
        share_bps=component.share_bps,
        amount=amount,
        currency=order.currency,
    )
    order = replace(
        order,
        sequence=order.sequence + 1,
        usage_charges=(*order.usage_charges, UsageCharge(charge.charge_id, amount)),
    )
    recorded = order_events.UsageRecorded(
        usage_id=report.usage_id,
        order_id=order.order_id,
        customer_id=order.customer_id,
        unit=component.pricing.unit,
        unit_amount=component.pricing.unit_amount,
        quantity=report.quantity,
        occurred_at=report.occurred_at,
        charge=charge,
    )
    return Transition(order, (Sequenced(order.sequence, recorded),), ())


def usage_charge_id(reporter_id: str, usage_id: str) -> str:
    # Usage ids are the reporting partner's own, so they are unique only per partner.
    return f"usage.{reporter_id}.{usage_id}"


def _usage_component(
    order: Order, partner_id: str, reporter_id: str
) -> tuple[Line, OrderedComponent] | None:
    for line in order.lines:
        if partner_id != reporter_id and line.owner_id != reporter_id:
            continue
        for component in line.components:
            if component.partner_id == partner_id and isinstance(component.pricing, UsagePricing):
                return line, component
    return None


def order_state(order: Order) -> order_events.OrderState:
    return order_events.OrderState(
        order_id=order.order_id,
        customer_id=order.customer_id,
        status=order.status,
        currency=order.currency,
        total=order.total,
        lines=[
            order_events.OrderLine(
                line_id=line.line_id,
                offering_id=line.offering_id,
                offering_version=line.offering_version,
                owner_id=line.owner_id,
                quantity=line.quantity,
                amount=line.amount,
                components=[
                    order_events.OrderComponent(
                        component_index=c.component_index,
                        partner_id=c.partner_id,
                        role=c.role,
                        name=c.name,
                        pricing=c.pricing,
                        agreement_id=c.agreement_id,
                        share_bps=c.share_bps,
                        amount=c.amount,
                    )
                    for c in line.components
                ],
            )
            for line in order.lines
        ],
        placed_at=order.placed_at,
        accept_by=order.accept_by,
        changed_at=order.changed_at,
        cancel_reason=order.cancel_reason,
    )


def fulfillment_components(
    order: Order, partner_id: str
) -> list[fulfillment_events.FulfillmentComponent]:
    """What one partner delivers: all of its components across the order's lines."""
    return [
        fulfillment_events.FulfillmentComponent(
            line_id=line.line_id,
            offering_id=line.offering_id,
            offering_version=line.offering_version,
            owner_id=line.owner_id,
            component_index=c.component_index,
            name=c.name,
            role=c.role,
            pricing=c.pricing,
            quantity=line.quantity,
        )
        for line in order.lines
        for c in line.components
        if c.partner_id == partner_id
    ]


def fulfillment_state(
    order: Order, fulfillment: Fulfillment
) -> fulfillment_events.FulfillmentState:
    return fulfillment_events.FulfillmentState(
        fulfillment_id=fulfillment.fulfillment_id,
        order_id=order.order_id,
        customer_id=order.customer_id,
        partner_id=fulfillment.partner_id,
        role=fulfillment.role,
        status=fulfillment.status,
        components=fulfillment_components(order, fulfillment.partner_id),
        accept_by=order.accept_by,
        changed_at=fulfillment.changed_at,
        reason=fulfillment.reason,
    )
