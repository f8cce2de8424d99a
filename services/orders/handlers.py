"""Orders use cases, each inside the caller's unit of work.

A change to an order is optimistic: it reads the order in one statement,
without a lock or a transaction, decides in the domain, and writes the new
state with its events in one statement that lands only if the order's
version is still the one read (``store.save_changes``).  If another change
landed in between, it reads again and decides again from what that change
left, so concurrent accepts, rejections, cancels and deadlines each decide
from the outcome of the others, as if they had queued.  The three partners
of an order answer at about the same moment: queueing on a row lock held
across BEGIN, two reads and COMMIT made each answer wait for the others'
round trips and kept connections idle in transaction; now a change holds the
row only for its one write.  The events of a change are numbered from the
order's own sequence and written in that same statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Never, NoReturn

from prometheus_client import Counter

from services.orders import domain, store
from services.orders.domain import (
    Command,
    InvalidTransition,
    Order,
    ReportUsage,
    RequestedLine,
    Transition,
)
from services.orders.terms import OrderableTerms
from services.orders.turns import OrderTurns, Turn
from shared import outbox, timers
from shared.clock import Clock
from shared.contracts import catalog_agreements, catalog_offerings
from shared.contracts import fulfillments as fulfillment_events
from shared.contracts import orders as order_events
from shared.contracts.envelope import Event
from shared.contracts.fulfillments import FulfillmentStatus
from shared.contracts.orders import OrderStatus
from shared.db import Connection
from shared.errors import Conflict, Contended, NotAllowed, NotFound, RuleViolated
from shared.ids import new_id
from shared.tokens import Principal

PRODUCER = "orders"
ACCEPTANCE_DEADLINE = "orders.acceptance-deadline"
# How often one change reads and decides again when others keep changing the order.
# Optimistic attempts at a change before it queues on the order's row lock.
OPTIMISTIC_ATTEMPTS = 3
CHANGES_LOST = Counter(
    "orders_changes_lost_total",
    "Changes of an order decided from a version another change had moved on (decided again)",
)


async def apply_catalog_event(conn: Connection, event: Event) -> None:
    """Keep the local copy of the catalog: offerings (every version) and agreements."""
    match event:
        case (
            catalog_offerings.OfferingPublished(offering=offering)
            | catalog_offerings.OfferingRetired(offering=offering)
            | catalog_offerings.OfferingOrderabilityChanged(offering=offering)
        ):
            await store.record_offering(conn, offering)
        case (
            catalog_agreements.AgreementCreated(agreement=agreement)
            | catalog_agreements.AgreementRevoked(agreement=agreement)
            | catalog_agreements.AgreementExpired(agreement=agreement)
        ):
            await store.record_agreement(conn, agreement)


async def place_order(
    conn: Connection,
    *,
    customer_id: str,
    lines: Sequence[RequestedLine],
    now: datetime,
    acceptance_window: timedelta,
    terms: OrderableTerms | None = None,
) -> Order:
    """``terms``: the process's memory of the catalog copy; without it, read from ``conn``."""
    wanted = sorted({line.offering_id for line in lines})
    offerings, agreements = await (
        terms.read(conn, wanted) if terms else store.orderable_terms(conn, wanted)
    )
    transition = domain.price_order(
        order_id=new_id("ord"),
        customer_id=customer_id,
        requested=lines,
        offerings=offerings,
        agreements=agreements,
        now=now,
        acceptance_window=acceptance_window,
        new_id=new_id,
    )
    # The order, its events and its acceptance deadline in one statement: they
    # commit together even when the caller opened no transaction.
    await store.insert_order(
        conn,
        transition.order,
        _outbox_batch(transition),
        deadline_kind=ACCEPTANCE_DEADLINE,
    )
    return transition.order


async def answer_fulfillment(
    conn: Connection,
    partner_id: str,
    fulfillment_id: str,
    command: Command,
    now: datetime,
    *,
    turns: OrderTurns | None = None,
) -> Order:
    """A partner accepts, rejects or completes its fulfilment of an order."""

    async def read() -> store.Snapshot:
        found = await store.fulfillment_order_snapshot(conn, fulfillment_id, partner_id)
        if found is None:
            raise NotFound(f"fulfillment {fulfillment_id}")
        return found

    return await _change(conn, read, command, now, turns)


async def cancel_order(
    conn: Connection,
    customer_id: str,
    order_id: str,
    now: datetime,
    *,
    turns: OrderTurns | None = None,
) -> Order:
    read = _order_read(conn, order_id, customer_id=customer_id)
    return await _change(conn, read, domain.CancelByCustomer(), now, turns)


async def acceptance_deadline_passed(
    conn: Connection, order_id: str, now: datetime, *, turns: OrderTurns | None = None
) -> None:
    """The acceptance timer fired: cancel the order if some partner still has not accepted.

    The timer is never cancelled when an order leaves ``pending`` (that would
    lock the timer after the order, the reverse of the timer loop); it fires
    and finds nothing to do.
    """
    try:
        await _change(conn, _order_read(conn, order_id), domain.DeadlinePassed(), now, turns)
    except (InvalidTransition, NotFound):
        return


def timer_handlers(clock: Clock, turns: OrderTurns | None = None) -> dict[str, timers.TimerHandler]:
    """What the orders timer loop fires; ``clock`` is the loop's own, so the two agree."""

    async def deadline(conn: Connection, order_id: str) -> None:
        await acceptance_deadline_passed(conn, order_id, clock(), turns=turns)

    return {ACCEPTANCE_DEADLINE: deadline}


async def report_usage(conn: Connection, order_id: str, report: ReportUsage, now: datetime) -> None:
    """Charge metered usage once per usage id; a repeated usage id changes nothing."""
    # Recording a charge only appends to the charges made; reading them all on
    # every report would make each report cost more than the last.
    found = await store.lock_order(conn, order_id, with_usage=False)
    if found is None:
        raise RuleViolated.single("order_id", domain.NOT_YOUR_ORDER)
    # Checked under the order's lock, so two reports of one usage id for this order
    # count once; reports of it for two orders are told apart by the insert below.
    # (A lock, not a version check: the usage row is inserted before the order is
    # written, and a report that lost to another change would have to undo it.)
    if await _usage_known(conn, report, order_id):
        return
    transition = domain.record_usage(found.order, report, now)
    charge = transition.order.usage_charges[-1]
    recorded = await store.record_usage(
        conn,
        reporter_id=report.partner_id,
        usage_id=report.usage_id,
        order_id=order_id,
        charge_id=charge.charge_id,
        amount=charge.amount,
        quantity=report.quantity,
        occurred_at=report.occurred_at,
    )
    if not recorded:
        # A concurrent report of this usage id (for another order: that one holds
        # another lock) won the insert; this one must leave no charge behind.
        await _usage_known(conn, report, order_id)
        return
    saved = await store.save_changes(conn, found, transition.order, _outbox_batch(transition))
    assert saved, "the order's row is locked: its version cannot have moved"


async def _usage_known(conn: Connection, report: ReportUsage, order_id: str) -> bool:
    """True when counted already for this order; a conflict when counted for another."""
    counted_for = await store.usage_order(conn, report.partner_id, report.usage_id)
    if counted_for is not None and counted_for != order_id:
        raise Conflict(f"usage_id {report.usage_id} was already counted for another order")
    return counted_for is not None


@dataclass(frozen=True)
class OrderList:
    """Orders newest first, and whether more follow the last of them."""

    orders: list[Order]
    more: bool


@dataclass(frozen=True)
class FulfillmentList:
    """A partner's fulfilments newest first, each with its order, and whether more follow."""

    fulfillments: list[tuple[str, Order]]
    more: bool


# Who sees which orders is decided here and only here: ``may_see`` for one
# order, ``list_orders`` and ``list_fulfillments`` for a page, by the same rule.


async def visible_order(conn: Connection, caller: Principal, order_id: str) -> Order:
    """Its customer, the accountable owner of any of its lines, or the operator."""
    found = await store.order(conn, order_id)
    if found is None or not may_see(caller, found):
        raise NotFound(f"order {order_id}")
    return found


def may_see(caller: Principal, order: Order) -> bool:
    if caller.role == "operator":
        return True
    if caller.role == "customer":
        return order.customer_id == caller.subject
    return caller.subject in order.owner_ids


async def list_orders(
    conn: Connection,
    caller: Principal,
    *,
    status: OrderStatus | None,
    after_id: str | None,
    limit: int,
) -> OrderList:
    """What ``may_see`` admits, a page at a time: a customer's own orders, the orders
    of the offerings a partner owns (it answers for the whole deal), or all of them."""
    match caller.role:
        case "customer":
            ids = await store.customer_order_ids(
                conn, caller.subject, status=status, after_id=after_id, limit=limit + 1
            )
        case "partner":
            ids = await store.owner_order_ids(
                conn, caller.subject, status=status, after_id=after_id, limit=limit + 1
            )
        case "operator":
            ids = await store.all_order_ids(conn, status=status, after_id=after_id, limit=limit + 1)
        case unknown:
            _refuse_role(unknown)
    return OrderList(await store.orders_by_id(conn, ids[:limit]), more=len(ids) > limit)


def _refuse_role(role: Never) -> NoReturn:
    """A role no case above knows: mypy proves there is none (``role`` is ``Never``), and
    should a token ever carry one anyway, the caller is refused, not answered with a 500."""
    raise NotAllowed(f"the role {role!r} may not list orders")


async def list_fulfillments(
    conn: Connection,
    caller: Principal,
    *,
    status: FulfillmentStatus | None,
    after_id: str | None,
    limit: int,
) -> FulfillmentList:
    """The fulfilment requests sent to the calling partner: its own and no one else's."""
    if caller.role != "partner":
        raise NotAllowed("only a partner has fulfillment requests")
    found = await store.partner_fulfillment_ids(
        conn, caller.subject, status=status, after_id=after_id, limit=limit + 1
    )
    page = found[:limit]
    orders = {o.order_id: o for o in await store.orders_by_id(conn, [oid for _, oid in page])}
    return FulfillmentList(
        [(fulfillment_id, orders[oid]) for fulfillment_id, oid in page], more=len(found) > limit
    )


def _order_read(
    conn: Connection, order_id: str, *, customer_id: str | None = None
) -> Callable[[], Awaitable[store.Snapshot]]:
    """What ``_change`` reads: the order, unless it is missing or (given
    ``customer_id``) another customer's, which looks the same."""

    async def read() -> store.Snapshot:
        found = await store.order_snapshot(conn, order_id)
        if found is None or customer_id not in (None, found.order.customer_id):
            raise NotFound(f"order {order_id}")
        return found

    return read


async def _change(
    conn: Connection,
    read: Callable[[], Awaitable[store.Snapshot]],
    command: Command,
    now: datetime,
    turns: OrderTurns | None,
) -> Order:
    """Read, decide, write if nobody changed the order meanwhile; else read again.

    ``read`` raises when the order is not the caller's to change.  Each lost
    attempt means another change of the order landed; no pause between
    attempts, since the next read finds it.  After ``OPTIMISTIC_ATTEMPTS``
    lost races the change queues on the order's row lock instead, as every
    change did before versions: a steady stream of usage reports (each holds
    that lock across its round trips) would otherwise make a cancel or a
    completion lose every race.  ``turns``: the changes of this order running
    in this process, to wait for rather than race.
    """
    before = await read()
    if turns is None:
        return await _attempts(conn, read, before, command, now, None)
    async with turns.turn(before.order.order_id) as turn:
        return await _attempts(conn, read, turn.newest(before), command, now, turn)


async def _attempts(
    conn: Connection,
    read: Callable[[], Awaitable[store.Snapshot]],
    before: store.Snapshot,
    command: Command,
    now: datetime,
    turn: Turn | None,
) -> Order:
    for attempt in range(OPTIMISTIC_ATTEMPTS):
        if attempt:
            CHANGES_LOST.inc()
            before = await read()
        transition = domain.decide(before.order, command, now)
        if await store.save_changes(conn, before, transition.order, _outbox_batch(transition)):
            if turn is not None and not conn.is_in_transaction():
                # Committed: what it stored is the order at the next version.
                turn.stored = store.Snapshot(transition.order, before.version + 1)
            return transition.order
    CHANGES_LOST.inc()
    return await _locked_attempt(conn, read, before.order.order_id, command, now)


async def _locked_attempt(
    conn: Connection,
    read: Callable[[], Awaitable[store.Snapshot]],
    order_id: str,
    command: Command,
    now: datetime,
) -> Order:
    """The change under the order's row lock: every writer of the order takes that
    lock, so nothing moves the version between this read and this write.

    In a transaction of its own, so the lock is held only for the read and the
    write; inside the caller's transaction (an Idempotency-Key, the timer loop)
    this is a savepoint and the lock is held until the caller commits.  A state
    written here is not handed on to the next turn, like any written inside a
    transaction.
    """
    async with conn.transaction():
        await store.lock_order_row(conn, order_id)
        before = await read()
        transition = domain.decide(before.order, command, now)
        if not await store.save_changes(conn, before, transition.order, _outbox_batch(transition)):
            # Unreachable while every writer of orders takes the row lock.
            raise Contended(f"order {order_id} changed under its lock; try again")
    return transition.order


def _outbox_batch(transition: Transition) -> outbox.Batch:
    """The transition's events, to write in the statement that stores it."""
    return outbox.batch(_outbox_entries(transition), producer=PRODUCER)


def _outbox_entries(transition: Transition) -> list[outbox.Entry]:
    order_id = transition.order.order_id
    return [
        *(
            outbox.Entry(order_events.TOPIC, e.event, order_id, e.sequence)
            for e in transition.order_events
        ),
        *(
            outbox.Entry(fulfillment_events.TOPIC, e, e.fulfillment.partner_id)
            for e in transition.fulfillment_events
        ),
    ]
