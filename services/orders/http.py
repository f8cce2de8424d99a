"""Orders routes: decode, call the use case in a unit of work, encode. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.orders import domain, handlers
from services.orders.api import (
    FulfillmentPage,
    FulfillmentSummary,
    FulfillmentView,
    LineView,
    ListFulfillments,
    ListOrders,
    OrderPage,
    OrderView,
    PlaceOrder,
    RejectFulfillment,
    ReportUsage,
    UsageAccepted,
)
from services.orders.domain import Accept, Command, Complete, Order, Reject, RequestedLine
from services.orders.terms import OrderableTerms
from services.orders.turns import OrderTurns
from shared.clock import Clock, utc_now
from shared.http.api import ANY_ROLE, Api, Call, Reply
from shared.http.pagination import cursor_of_type, encode_cursor
from shared.money import Money
from shared.tokens import Role


@dataclass(frozen=True)
class OrdersHttp:
    acceptance_window: timedelta
    clock: Clock = utc_now
    # The process's memory of the orderable terms; without it every placement reads them.
    terms: OrderableTerms | None = None
    # Changes of one order in this process wait for each other instead of racing.
    turns: OrderTurns | None = None


CUSTOMER: frozenset[Role] = frozenset({"customer"})
PARTNER: frozenset[Role] = frozenset({"partner"})


def _after(cursor: str | None) -> str | None:
    return cursor_of_type(cursor, str)[0] if cursor else None


def build_api(deps: OrdersHttp) -> Api:
    api = Api("Partner marketplace: orders")
    route = api.route

    @route(
        "POST", "/v1/orders", summary="Place an order", roles=CUSTOMER,
        body=PlaceOrder, response=OrderView, status=201, tag="orders",
    )  # fmt: skip
    async def place_order(call: Call[PlaceOrder, None]) -> OrderView:
        lines = [RequestedLine(line.offering_id, line.quantity) for line in call.body.lines]
        # No transaction of its own: the placement reads the local catalog, then writes
        # everything in one statement, which commits whole or not at all; BEGIN and
        # COMMIT would be two more round trips.  Under an Idempotency-Key this is the
        # key's transaction, so the order and the stored reply still commit together.
        async with call.connection() as conn:
            order = await handlers.place_order(
                conn,
                customer_id=call.caller.subject,
                lines=lines,
                now=deps.clock(),
                acceptance_window=deps.acceptance_window,
                terms=deps.terms,
            )
        return order_view(order)

    @route(
        "GET", "/v1/orders/{order_id}", summary="Read an order with every partner's fulfillment",
        roles=ANY_ROLE, response=OrderView, tag="orders",
    )  # fmt: skip
    async def get_order(call: Call[None, None]) -> OrderView:
        order_id = call.path_id("order_id", "order")
        async with call.connection() as conn:
            order = await handlers.visible_order(conn, call.caller, order_id)
        return order_view(order)

    @route(
        "GET", "/v1/orders",
        summary="List a customer's orders, or the orders a partner is accountable for",
        roles=ANY_ROLE, query=ListOrders, response=OrderPage, tag="orders",
    )  # fmt: skip
    async def list_orders(call: Call[None, ListOrders]) -> OrderPage:
        query = call.query
        async with call.connection() as conn:
            page = await handlers.list_orders(
                conn,
                call.caller,
                status=query.status,
                after_id=_after(query.cursor),
                limit=query.limit,
            )
        return OrderPage(
            items=[order_view(order) for order in page.orders],
            next_cursor=encode_cursor([page.orders[-1].order_id]) if page.more else None,
        )

    @route(
        "POST", "/v1/orders/{order_id}/cancel", summary="Cancel an order", roles=CUSTOMER,
        response=OrderView, tag="orders",
    )  # fmt: skip
    async def cancel_order(call: Call[None, None]) -> OrderView:
        order_id = call.path_id("order_id", "order")
        # No transaction of its own, as for an answer below.
        async with call.connection() as conn:
            order = await handlers.cancel_order(
                conn, call.caller.subject, order_id, deps.clock(), turns=deps.turns
            )
        return order_view(order)

    @route(
        "GET", "/v1/fulfillments", summary="List the fulfillment requests sent to the partner",
        roles=PARTNER, query=ListFulfillments, response=FulfillmentPage, tag="fulfillments",
    )  # fmt: skip
    async def list_fulfillments(call: Call[None, ListFulfillments]) -> FulfillmentPage:
        query = call.query
        async with call.connection() as conn:
            page = await handlers.list_fulfillments(
                conn,
                call.caller,
                status=query.status,
                after_id=_after(query.cursor),
                limit=query.limit,
            )
        return FulfillmentPage(
            items=[fulfillment_view(order, call.caller.subject) for _, order in page.fulfillments],
            next_cursor=encode_cursor([page.fulfillments[-1][0]]) if page.more else None,
        )

    async def answer(call: Call[Any, None], command: Command) -> FulfillmentView:
        fulfillment_id = call.path_id("fulfillment_id", "fulfillment")
        # No transaction of its own: the change reads the order in one statement
        # and writes it in one, which commits whole by itself and only if nobody
        # changed the order in between.  A transaction would hold the order's row
        # across the round trips of BEGIN, the write and COMMIT while the other
        # partners' answers wait on it.  Under an Idempotency-Key this is the key's
        # transaction, so the change and the stored reply still commit together.
        async with call.connection() as conn:
            order = await handlers.answer_fulfillment(
                conn, call.caller.subject, fulfillment_id, command, deps.clock(), turns=deps.turns
            )
        return fulfillment_view(order, call.caller.subject)

    @route(
        "POST", "/v1/fulfillments/{fulfillment_id}/accept", summary="Accept a fulfillment",
        roles=PARTNER, response=FulfillmentView, tag="fulfillments",
    )  # fmt: skip
    async def accept_fulfillment(call: Call[None, None]) -> FulfillmentView:
        return await answer(call, Accept(call.caller.subject))

    @route(
        "POST", "/v1/fulfillments/{fulfillment_id}/reject", summary="Reject a fulfillment",
        roles=PARTNER, body=RejectFulfillment, response=FulfillmentView, tag="fulfillments",
    )  # fmt: skip
    async def reject_fulfillment(call: Call[RejectFulfillment, None]) -> FulfillmentView:
        return await answer(call, Reject(call.caller.subject, call.body.reason))

    @route(
        "POST", "/v1/fulfillments/{fulfillment_id}/complete",
        summary="Report a fulfillment delivered", roles=PARTNER,
        response=FulfillmentView, tag="fulfillments",
    )  # fmt: skip
    async def complete_fulfillment(call: Call[None, None]) -> FulfillmentView:
        return await answer(call, Complete(call.caller.subject))

    @route(
        "POST", "/v1/usage", summary="Report metered usage", roles=PARTNER,
        body=ReportUsage, response=UsageAccepted, status=202, tag="usage",
    )  # fmt: skip
    async def report_usage(call: Call[ReportUsage, None]) -> UsageAccepted | Reply:
        body = call.body
        report = domain.ReportUsage(
            usage_id=body.usage_id,
            partner_id=call.caller.subject,
            component_partner_id=body.component_partner_id,
            quantity=body.quantity,
            occurred_at=body.occurred_at,
        )
        async with call.transaction() as conn:
            await handlers.report_usage(conn, body.order_id, report, deps.clock())
        return UsageAccepted(usage_id=body.usage_id, order_id=body.order_id)

    return api


def order_view(order: Order) -> OrderView:
    return OrderView(
        id=order.order_id,
        customer_id=order.customer_id,
        status=order.status,
        lines=[
            LineView(
                id=line.line_id,
                offering_id=line.offering_id,
                offering_version=line.offering_version,
                owner_id=line.owner_id,
                quantity=line.quantity,
                amount=Money(line.amount, order.currency),
            )
            for line in order.lines
        ],
        total=Money(order.total, order.currency),
        fulfillments=[
            FulfillmentSummary(
                id=f.fulfillment_id, partner_id=f.partner_id, role=f.role, status=f.status
            )
            for f in order.fulfillments
        ],
        placed_at=order.placed_at,
        accept_by=order.accept_by,
        changed_at=order.changed_at,
        cancel_reason=order.cancel_reason,
    )


def fulfillment_view(order: Order, partner_id: str) -> FulfillmentView:
    fulfillment = order.fulfillment_of(partner_id)
    assert fulfillment is not None
    state = domain.fulfillment_state(order, fulfillment)
    return FulfillmentView(
        id=state.fulfillment_id,
        order_id=state.order_id,
        customer_id=state.customer_id,
        partner_id=state.partner_id,
        role=state.role,
        status=state.status,
        components=state.components,
        accept_by=state.accept_by,
        changed_at=state.changed_at,
        reason=state.reason,
    )
