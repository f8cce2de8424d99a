"""What settlement reads of the orders topic: its events, decoded to the fields the ledger books.

Every orders event carries the order's full state (lines, components,
pricing, deadlines); settlement books from a handful of fields.  These
Structs stand for the contract's events (``shared.contracts.orders``) under
the same type names and schema versions, with only those fields: msgspec
skips the rest of the payload without building it, and each charge is
decoded straight into the ledger's ``ChargedComponent`` (the same field
names as the contract's ``Charge``).  Decoding the whole state cost more than
booking the event.  A unit test holds them to the contract: same types and
versions, and the same values as the contract's own decoding.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from services.settlement.domain import ChargedComponent, OrderStatus
from shared.contracts import orders
from shared.contracts.envelope import Event


class OrderFacts(msgspec.Struct, frozen=True, gc=False):
    """Of ``orders.OrderState``: what an order's book starts from."""

    order_id: str
    customer_id: str
    status: OrderStatus
    currency: str
    total: int
    placed_at: datetime


class RefundLine(msgspec.Struct, frozen=True, gc=False):
    """``orders.Refund``: ``amount`` of charge ``charge_id`` goes back."""

    refund_id: str
    charge_id: str
    amount: int
    currency: str


class _OrderStateEvent(Event, frozen=True, kw_only=True, gc=False):
    """The events that carry the order's state: settlement reads its facts."""

    order: OrderFacts


class OrderPlaced(_OrderStateEvent, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.OrderPlaced.EVENT_TYPE
    SCHEMA_VERSION = orders.OrderPlaced.SCHEMA_VERSION


class OrderConfirmed(_OrderStateEvent, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.OrderConfirmed.EVENT_TYPE
    SCHEMA_VERSION = orders.OrderConfirmed.SCHEMA_VERSION
    charges: list[ChargedComponent]


class OrderFulfilled(_OrderStateEvent, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.OrderFulfilled.EVENT_TYPE
    SCHEMA_VERSION = orders.OrderFulfilled.SCHEMA_VERSION


class OrderCancelled(_OrderStateEvent, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.OrderCancelled.EVENT_TYPE
    SCHEMA_VERSION = orders.OrderCancelled.SCHEMA_VERSION


class OrderRefunded(Event, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.OrderRefunded.EVENT_TYPE
    SCHEMA_VERSION = orders.OrderRefunded.SCHEMA_VERSION
    order_id: str
    customer_id: str
    currency: str
    refunds: list[RefundLine]


class UsageRecorded(Event, frozen=True, kw_only=True, gc=False):
    EVENT_TYPE = orders.UsageRecorded.EVENT_TYPE
    SCHEMA_VERSION = orders.UsageRecorded.SCHEMA_VERSION
    order_id: str
    customer_id: str
    charge: ChargedComponent


# One for each event of the topic: an event settlement does not know is dead-lettered.
EVENTS: tuple[type[Event], ...] = (
    OrderPlaced,
    OrderConfirmed,
    OrderFulfilled,
    OrderCancelled,
    OrderRefunded,
    UsageRecorded,
)
