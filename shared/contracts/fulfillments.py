"""Topic ``orders.fulfillments``: the requests fanned out to each partner of an order.

Keyed by partner id, so one partner's requests stay in order on one partition
and a partner can consume its own requests straight from this topic (or use
the HTTP endpoints).  Each event carries the fulfilment's full state: what to
deliver (components and quantities), for which order and customer, who is
accountable (each component's offering owner) and by when to accept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import Event, Topic
from shared.contracts.pricing import Pricing

FulfillmentStatus = Literal["requested", "accepted", "completed", "rejected", "cancelled"]


class FulfillmentComponent(msgspec.Struct, frozen=True, kw_only=True):
    line_id: str
    offering_id: str
    offering_version: int
    owner_id: str  # the accountable partner the customer deals with
    component_index: int
    name: str
    role: PartnerKind
    pricing: Pricing
    quantity: int


class FulfillmentState(msgspec.Struct, frozen=True, kw_only=True):
    fulfillment_id: str
    order_id: str
    customer_id: str
    partner_id: str
    role: PartnerKind
    status: FulfillmentStatus
    components: list[FulfillmentComponent]
    accept_by: datetime
    changed_at: datetime
    reason: str | None = None


class FulfillmentRequested(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.fulfillment.requested"
    fulfillment: FulfillmentState


class FulfillmentAccepted(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.fulfillment.accepted"
    fulfillment: FulfillmentState


class FulfillmentRejected(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.fulfillment.rejected"
    fulfillment: FulfillmentState


class FulfillmentCompleted(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "orders.fulfillment.completed"
    fulfillment: FulfillmentState


class FulfillmentCancelled(Event, frozen=True, kw_only=True):
    """Compensation: the order was cancelled, so this partner must not (or no longer) deliver."""

    EVENT_TYPE = "orders.fulfillment.cancelled"
    fulfillment: FulfillmentState


TOPIC = Topic(
    name="orders.fulfillments",
    partitions=6,
    key_description="partner_id",
    events=(
        FulfillmentRequested,
        FulfillmentAccepted,
        FulfillmentRejected,
        FulfillmentCompleted,
        FulfillmentCancelled,
    ),
    retain_forever=True,
)
