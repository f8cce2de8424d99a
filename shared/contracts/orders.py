"""Topic ``orders.orders``: every change to an order, in the order's own sequence.

Keyed by order id; each event's envelope carries the order's sequence number
(1, 2, 3 ... per order), so a consumer applies one order's events in order,
recognises a duplicate or stale one, and parks a gap instead of applying
around it.  Kept forever (not compacted): settlement rebuilds its ledger by
replaying this topic from offset 0.

The events carry everything settlement needs to split money without asking
another service: each charged component's partner, role, agreement and share,
the owner accountable for the line, amounts in integer minor units and the
currency.  Money moves only through ``Charge`` (what a customer owes for one
component) and ``Refund`` (what of one charge goes back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import Event, Topic
from shared.contracts.pricing import Pricing

OrderStatus = Literal["pending", "confirmed", "fulfilled", "cancelled"]
CancelReason = Literal["rejected", "deadline", "customer"]
ChargeKind = Literal["order", "usage"]


class OrderComponent(msgspec.Struct, frozen=True, kw_only=True):
    """One partner's part of one order line, on the terms of the version bought."""

    component_index: int  # position in the offering version's components
    partner_id: str
    role: PartnerKind
    name: str
    pricing: Pricing
    agreement_id: str | None  # None for the owner's own components
    share_bps: int  # the component partner's share of net revenue; 10000 for the owner
    amount: int  # charged at confirmation (quantity x unit); 0 for usage components


class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
    line_id: str
    offering_id: str
    offering_version: int
    owner_id: str  # the accountable partner for this line
    quantity: int
    amount: int  # sum of its components' amounts
    components: list[OrderComponent]


class OrderState(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    customer_id: str
    status: OrderStatus
    currency: str
    total: int
    lines: list[OrderLine]
    placed_at: datetime
    accept_by: datetime
    changed_at: datetime
    cancel_reason: CancelReason | None = None


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """What the customer owes for one component: the unit settlement splits.

    ``charge_id`` is stable (derived from order, line and component, or from the
    usage id), so a refund names exactly the charge it reverses.
    """

    charge_id: str
    kind: ChargeKind
    order_id: str
    line_id: str
    offering_id: str
    component_index: int
    owner_id: str
    partner_id: str
    role: PartnerKind
    agreement_id: str | None
    share_bps: int
    amount: int
    currency: str


class Refund(msgspec.Struct, frozen=True, kw_only=True):
    """``amount`` of charge ``charge_id`` goes back to the customer (at most the charge)."""

    refund_id: str
    charge_id: str
    amount: int
    currency: str


class OrderPlaced(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.order.placed"
    order: OrderState


class OrderConfirmed(Event, frozen=True, kw_only=True):
    """Every partner accepted: ``charges`` are owed now (one per non-zero component)."""

    EVENT_TYPE = "orders.order.confirmed"
    order: OrderState
    charges: list[Charge]


class OrderFulfilled(Event, frozen=True, kw_only=True):
    """Every partner delivered: what was charged may now be paid out."""

    EVENT_TYPE = "orders.order.fulfilled"
    order: OrderState


class OrderCancelled(Event, frozen=True, kw_only=True):
    """Cancelled before fulfilment; an ``OrderRefunded`` follows if anything was charged."""

    EVENT_TYPE = "orders.order.cancelled"
    order: OrderState


class OrderRefunded(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.order.refunded"
    order_id: str
    customer_id: str
    currency: str
    refunds: list[Refund]


class UsageRecorded(Event, frozen=True, kw_only=True):
    """Metered usage of a usage-priced component, charged as it is recorded."""

    EVENT_TYPE = "orders.usage.recorded"
    usage_id: str
    order_id: str
    customer_id: str
    unit: str
    unit_amount: int
    quantity: int
    occurred_at: datetime
    charge: Charge


TOPIC = Topic(
    name="orders.orders",
    partitions=6,
    key_description="order_id",
    events=(
        OrderPlaced,
        OrderConfirmed,
        OrderFulfilled,
        OrderCancelled,
        OrderRefunded,
        UsageRecorded,
    ),
    retain_forever=True,
)
