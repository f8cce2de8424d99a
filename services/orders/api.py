"""The orders service's request and response bodies, as the public contract names them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from services.orders.domain import MAX_LINES, MAX_QUANTITY, MAX_USAGE_QUANTITY
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.fulfillments import FulfillmentComponent, FulfillmentStatus
from shared.contracts.orders import CancelReason, OrderStatus
from shared.http.fields import AwareDatetime, Cursor, Limit
from shared.money import Money

# Ids of other services' things are checked against the local catalog, not by
# shape, so an unknown one is answered "unknown offering" rather than "malformed".
ForeignId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
UsageId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[ -~]+$")]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")]


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class LineInput(_Request, frozen=True, forbid_unknown_fields=True):
    offering_id: ForeignId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]


class PlaceOrder(_Request, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[list[LineInput], msgspec.Meta(min_length=1, max_length=MAX_LINES)]


class LineView(msgspec.Struct, frozen=True):
    id: str
    offering_id: str
    offering_version: int
    owner_id: str
    quantity: int
    amount: Money


class FulfillmentSummary(msgspec.Struct, frozen=True):
    id: str
    partner_id: str
    role: PartnerKind
    status: FulfillmentStatus


class OrderView(msgspec.Struct, frozen=True):
    id: str
    customer_id: str
    status: OrderStatus
    lines: list[LineView]
    total: Money
    fulfillments: list[FulfillmentSummary]
    placed_at: datetime
    accept_by: datetime
    changed_at: datetime
    cancel_reason: CancelReason | None


class OrderPage(msgspec.Struct, frozen=True):
    items: list[OrderView]
    next_cursor: str | None


class ListOrders(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: OrderStatus | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class FulfillmentView(msgspec.Struct, frozen=True):
    id: str
    order_id: str
    customer_id: str
    partner_id: str
    role: PartnerKind
    status: FulfillmentStatus
    components: list[FulfillmentComponent]
    accept_by: datetime
    changed_at: datetime
    reason: str | None


class FulfillmentPage(msgspec.Struct, frozen=True):
    items: list[FulfillmentView]
    next_cursor: str | None


class ListFulfillments(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: FulfillmentStatus | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class RejectFulfillment(_Request, frozen=True, forbid_unknown_fields=True):
    reason: Reason


class ReportUsage(_Request, frozen=True, forbid_unknown_fields=True):
    usage_id: UsageId
    order_id: ForeignId
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_USAGE_QUANTITY)]
    occurred_at: AwareDatetime
    component_partner_id: ForeignId | None = None


class UsageAccepted(msgspec.Struct, frozen=True):
    usage_id: str
    order_id: str
