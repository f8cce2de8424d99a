"""Settlement's use cases, each inside the caller's transaction.

``settle_order_events`` books a chunk of order events (as ``order_events``
decodes them) set-wise: it loads what the chunk's orders need in a few
queries, applies the events in memory in each order's sequence (``domain``),
and writes every table with one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.settlement import store
from services.settlement.domain import (
    ChargeRecord,
    JournalEntry,
    LedgerRefused,
    OrderBook,
    PayoutPlan,
    RefundRecord,
    book_charge,
    book_refund,
    failed_entry,
    paid_entry,
    payout_entry,
    plan_payouts,
    release,
)
from services.settlement.order_events import (
    OrderCancelled,
    OrderConfirmed,
    OrderFacts,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    UsageRecorded,
)
from services.settlement.reconciliation import (
    BankLine,
    LineOutcome,
    Outcomes,
    StatusMove,
    is_missing,
    reconcile_statement,
)
from shared import outbox
from shared.contracts import payouts as payout_contract
from shared.contracts.envelope import Envelope, Event
from shared.contracts.payouts import PayoutStatus
from shared.db import Connection
from shared.ids import new_id

PRODUCER = "settlement"
OrderEvent = tuple[Envelope, Event]

_NEEDS_CHARGES = (OrderRefunded, OrderFulfilled)
# Tuples, not unions: isinstance checks them faster, and it runs per event.
_ORDER_STATE_EVENTS = (OrderPlaced, OrderConfirmed, OrderFulfilled, OrderCancelled)
_ORDER_ID_EVENTS = (OrderRefunded, UsageRecorded)


def order_id_of(event: Event) -> str:
    if isinstance(event, _ORDER_STATE_EVENTS):
        return event.order.order_id
    if isinstance(event, _ORDER_ID_EVENTS):
        return event.order_id
    raise LedgerRefused(f"{type(event).__name__} is not an order event")


def keyed_order_id(envelope: Envelope, event: Event) -> str:
    """The order ``event`` books on, which must be the order its envelope is keyed by.

    The consumer numbers and dedupes an order's events by the envelope's key,
    and orders keys every event of an order by that order's id: an event
    keyed otherwise would get past both and book on a real order, so it is
    forged or corrupt, and refused.
    """
    order_id = order_id_of(event)
    if envelope.key != order_id:
        raise LedgerRefused(
            f"{type(event).__name__} for order {order_id} is keyed by {envelope.key!r}"
        )
    return order_id


def _book_of(order: OrderFacts) -> OrderBook:
    return OrderBook(
        order_id=order.order_id,
        customer_id=order.customer_id,
        currency=order.currency,
        status=order.status,
        placed_at=order.placed_at,
        placed_total=order.total,
    )


@dataclass
class _Booked:
    """What one chunk adds, written at the end with one statement per table."""

    charges: list[ChargeRecord]
    refunds: list[RefundRecord]
    entries: list[JournalEntry]

    def add(self, record: ChargeRecord | RefundRecord, entry: JournalEntry | None) -> None:
        if isinstance(record, ChargeRecord):
            self.charges.append(record)
        else:
            self.refunds.append(record)
        if entry is not None:
            self.entries.append(entry)


def _apply(
    book: OrderBook | None, envelope: Envelope, event: Event, fee_bps: int, booked: _Booked
) -> OrderBook:
    """One event on its order's book; returns the book (created by the order's first event)."""
    at, event_id = envelope.occurred_at, envelope.event_id
    if isinstance(event, _ORDER_STATE_EVENTS):
        book = book or _book_of(event.order)
        book.status = event.order.status
    if isinstance(event, OrderConfirmed):
        assert book is not None
        for charge in event.charges:
            booked.add(*book_charge(book, charge, fee_bps=fee_bps, booked_at=at, event_id=event_id))
    elif isinstance(event, OrderFulfilled):
        assert book is not None
        entry = release(book, booked_at=at, event_id=event_id)
        if entry is not None:
            booked.entries.append(entry)
    elif isinstance(event, UsageRecorded):
        if book is None:
            book = OrderBook(
                order_id=event.order_id,
                customer_id=event.customer_id,
                currency=event.charge.currency,
                status="confirmed",
                placed_at=at,
                placed_total=0,
            )
        booked.add(
            *book_charge(book, event.charge, fee_bps=fee_bps, booked_at=at, event_id=event_id)
        )
    elif isinstance(event, OrderRefunded):
        if book is None:
            raise LedgerRefused(f"refund for order {event.order_id}, which was never charged")
        for refund in event.refunds:
            booked.add(
                *book_refund(
                    book,
                    refund_id=refund.refund_id,
                    charge_id=refund.charge_id,
                    amount=refund.amount,
                    currency=refund.currency,
                    booked_at=at,
                    event_id=event_id,
                )
            )
    assert book is not None
    return book


async def settle_order_events(
    conn: Connection, events: Sequence[OrderEvent], *, fee_bps: int
) -> None:
    """Book a chunk of order events, each order's in the order given.

    The consumer hands over only new events, each order's in its sequence
    (``BatchConsumer`` with ``sequencing="strict"`` dedupes by event id and
    parks an event that comes after a gap until the gap fills).
    """
    order_ids = [keyed_order_id(envelope, event) for envelope, event in events]
    books = await store.order_books(conn, list(dict.fromkeys(order_ids)))
    needing_charges = {
        order_id
        for order_id, (_, event) in zip(order_ids, events, strict=True)
        if isinstance(event, _NEEDS_CHARGES)
    }
    await store.load_charges(conn, {o: b for o, b in books.items() if o in needing_charges})
    booked = _Booked([], [], [])
    changed: dict[str, OrderBook] = {}
    for order_id, (envelope, event) in zip(order_ids, events, strict=True):
        books[order_id] = changed[order_id] = _apply(
            books.get(order_id), envelope, event, fee_bps, booked
        )
    await store.save_order_books(conn, changed.values())
    await store.insert_charges(conn, booked.charges)
    await store.insert_refunds(conn, booked.refunds)
    await store.insert_entries(conn, booked.entries)


@dataclass(frozen=True)
class PayoutMade:
    payout_id: str
    partner_id: str
    amount: int
    currency: str
    reference: str


def payout_reference(payout_id: str) -> str:
    """What the bank statement carries: short, unique, upper case as banks print it."""
    return "MP-" + payout_id.removeprefix("pay_").upper()


# _KEY_ORDER: booking postings locks the kept balances they move (the roll-up
# trigger upserts account_balances and order_balances), in key order within
# one statement.  A chunk of order events books in one statement; a payout run
# or a reconciliation that booked payout by payout would lock them in another
# order and could deadlock with a chunk charging or refunding the same orders.
# So each books all its entries with one insert_entries call, at its end.


async def run_payouts(conn: Connection, as_of: datetime, now: datetime) -> list[PayoutMade]:
    """Pay every partner's positive available balance at ``as_of``, once.

    Runs take turns on an advisory lock, and each partner and currency is paid
    at most once per ``as_of`` (a unique constraint), so the same ``as_of``
    again, or two runs at once, pay nothing twice.
    """
    await store.lock_payout_runs(conn)
    made: list[PayoutMade] = []
    entries: list[JournalEntry] = []
    for plan in plan_payouts(await store.payable_by_order(conn, as_of)):
        payout_id = new_id("pay")
        reference = payout_reference(payout_id)
        if not await store.insert_payout(
            conn,
            payout_id=payout_id,
            partner_id=plan.partner_id,
            currency=plan.currency,
            amount=plan.amount,
            reference=reference,
            as_of=as_of,
        ):
            continue
        entries.append(payout_entry(payout_id, plan, now))
        payout = PayoutMade(payout_id, plan.partner_id, plan.amount, plan.currency, reference)
        await _record_payout(conn, payout, as_of, "pending")
        made.append(payout)
    await store.insert_entries(conn, entries)  # one statement: see _KEY_ORDER
    return made


async def _record_payout(
    conn: Connection,
    payout: PayoutMade,
    as_of: datetime,
    status: PayoutStatus,
    at: datetime | None = None,
) -> None:
    """The payout's event, in the outbox: initiated, paid (booked at ``at``) or failed."""
    state = payout_contract.PayoutState(
        payout_id=payout.payout_id,
        partner_id=payout.partner_id,
        amount=payout.amount,
        currency=payout.currency,
        reference=payout.reference,
        as_of=as_of,
        status=status,
    )
    event: Event
    if at is None:
        event = payout_contract.PayoutInitiated(payout=state)
    elif status == "paid":
        event = payout_contract.PayoutPaid(payout=state, booked_at=at)
    else:
        event = payout_contract.PayoutFailed(payout=state, returned_at=at)
    await outbox.append(
        conn, payout_contract.TOPIC, event, key=payout.partner_id, producer=PRODUCER
    )


@dataclass(frozen=True)
class Reconciled:
    reconciliation_id: str
    outcomes: Outcomes
    missing: list[LineOutcome]


async def reconcile(conn: Connection, lines: Sequence[BankLine]) -> Reconciled:
    """Match a bank statement to payouts by reference; book what it says (``reconciliation``).

    A deposit of a pending payout pays it (in transit → cash); a return fails
    it (its money back to available).  What an earlier statement already
    recorded is reported ``already_reconciled`` and moves nothing, so the same
    statement twice changes nothing the second time.
    """
    payouts = await store.payouts_by_reference(conn, sorted({line.reference for line in lines}))
    outcomes = reconcile_statement(list(lines), {p.reference: p for p in payouts})
    entries = [await _book_move(conn, move) for move in outcomes.moves]
    await store.insert_entries(conn, entries)  # one statement: see _KEY_ORDER
    missing = [
        LineOutcome(p.reference, p.amount, None, p.currency, p.payout_id, p.status)
        for p in await store.payouts_in_transit(conn)
        if is_missing(p, outcomes)
    ]
    return Reconciled(new_id("rec"), outcomes, missing)


async def _book_move(conn: Connection, move: StatusMove) -> JournalEntry:
    """A payout paid or returned: its status and its event; the entry is the caller's to book."""
    payout = move.payout
    plan = PayoutPlan(
        payout.partner_id,
        payout.currency,
        tuple(await store.payout_items(conn, payout.payout_id)),
    )
    if move.to == "paid":
        await store.mark_paid(conn, payout.payout_id, move.booked_at)
        entry = paid_entry(payout.payout_id, plan, move.booked_at)
    else:
        await store.mark_failed(conn, payout.payout_id, move.booked_at)
        entry = failed_entry(payout.payout_id, plan, move.booked_at, was_paid=move.was_paid)
    made = PayoutMade(
        payout.payout_id, payout.partner_id, payout.amount, payout.currency, payout.reference
    )
    await _record_payout(conn, made, payout.as_of, move.to, move.booked_at)
    return entry
