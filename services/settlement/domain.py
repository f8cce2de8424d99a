"""The ledger's pure rules: which journal entries each money movement books.

No I/O.  An ``OrderBook`` is what settlement knows of one order (its charges,
with their splits, and what of each was refunded); the functions here turn a
charge, a refund, a fulfilment, a payout, a bank match or a bank return into
balanced journal entries.

Accounts (``account``, with a partner for the partner's own ones):

* ``customer_receivables`` — what customers owe for what they were charged;
* ``fee_revenue`` — the marketplace's fees;
* ``partner_pending`` — owed to a partner, not yet releasable (order not fulfilled);
* ``partner_available`` — owed to a partner and payable;
* ``payouts_in_transit`` — paid out to a partner, not yet confirmed by the bank;
* ``cash`` — money that left the marketplace's bank account.

A posting's amount is positive for a debit and negative for a credit.  What is
owed to a partner is a credit, so the partner's balance is the negated sum.

A refund of money already paid out is booked like Stripe does: it is taken
from the partner's available balance, which then goes negative (the partner
owes it back); later payouts pay only a positive available balance, so the
debt is netted against what the partner earns next.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec

from services.settlement.split import NO_PARTS, Parts, Split, split_charge, split_refund
from shared.money import MAX_AMOUNT

AccountKind = Literal[
    "customer_receivables",
    "fee_revenue",
    "cash",
    "partner_pending",
    "partner_available",
    "payouts_in_transit",
]
EntryKind = Literal["charge", "refund", "release", "payout", "paid", "failed"]
Part = Literal["gross", "fee", "share", "margin", "release", "payout", "paid", "failed"]
OrderStatus = Literal["pending", "confirmed", "fulfilled", "cancelled"]
# As the orders contract spells them: a charge outside them is refused (dead-lettered)
# when its event is decoded, not booked.
ChargeKind = Literal["order", "usage"]
PartnerRole = Literal["isv", "managed_service", "integrator", "reseller"]

PARTNER_ACCOUNTS: tuple[AccountKind, ...] = (
    "partner_pending",
    "partner_available",
    "payouts_in_transit",
)


# The ledger's value types hold no cycles, so they are kept out of the cyclic
# garbage collector (``gc=False``): a chunk allocates tens of thousands of them,
# and collections triggered by them cost a quarter of the booking's CPU.


class LedgerRefused(Exception):
    """An event settlement cannot book as it is (an over-refund, an unknown charge)."""


class Posting(msgspec.Struct, frozen=True, gc=False):
    account: AccountKind
    partner_id: str | None
    amount: int
    part: Part
    order_id: str | None


class JournalEntry(msgspec.Struct, frozen=True, gc=False):
    entry_id: str
    kind: EntryKind
    booked_at: datetime
    currency: str
    postings: tuple[Posting, ...]
    order_id: str | None = None
    charge_id: str | None = None
    refund_id: str | None = None
    payout_id: str | None = None
    event_id: str | None = None


class ChargedComponent(msgspec.Struct, frozen=True, gc=False):
    """One component amount a customer owes, as the orders service charged it."""

    charge_id: str
    kind: ChargeKind
    order_id: str
    line_id: str
    offering_id: str
    component_index: int
    owner_id: str
    partner_id: str
    role: PartnerRole
    agreement_id: str | None
    share_bps: int
    amount: int
    currency: str


class ChargeRecord(msgspec.Struct, frozen=True, gc=False):
    """A charge with the split it was booked with: the split audit."""

    charge: ChargedComponent
    split: Split
    charged_at: datetime


class RefundRecord(msgspec.Struct, frozen=True, gc=False):
    refund_id: str
    charge_id: str
    order_id: str
    currency: str
    split: Split
    refunded_at: datetime


@dataclass
class OrderBook:
    """What settlement knows of one order while events about it are applied."""

    order_id: str
    customer_id: str
    currency: str
    status: OrderStatus
    placed_at: datetime
    placed_total: int
    fulfilled: bool = False
    charges: dict[str, ChargeRecord] = field(default_factory=dict)
    refunded: dict[str, Parts] = field(default_factory=dict)

    def pending_by_partner(self) -> dict[str, int]:
        """What each partner is owed for this order net of refunds (share plus margin)."""
        owed: dict[str, int] = {}
        refunded = self.refunded
        for charge_id, record in self.charges.items():
            left = record.split.parts
            if charge_id in refunded:  # most charges are never refunded
                left = left - refunded[charge_id]
            charge = record.charge
            owed[charge.partner_id] = owed.get(charge.partner_id, 0) + left.share
            owed[charge.owner_id] = owed.get(charge.owner_id, 0) + left.margin
        return owed


def _partner_account(released: bool) -> AccountKind:
    return "partner_available" if released else "partner_pending"


def _parts_postings(
    parts: Parts, record: ChargeRecord, *, sign: int, released: bool
) -> list[Posting]:
    """Credits (sign -1) or debits (sign +1) of the fee, share and margin; zeros left out."""
    charge = record.charge
    account = _partner_account(released)
    candidates = (
        Posting("fee_revenue", None, sign * parts.fee, "fee", charge.order_id),
        Posting(account, charge.partner_id, sign * parts.share, "share", charge.order_id),
        Posting(account, charge.owner_id, sign * parts.margin, "margin", charge.order_id),
    )
    return [posting for posting in candidates if posting.amount]


def book_charge(
    book: OrderBook,
    charge: ChargedComponent,
    *,
    fee_bps: int,
    booked_at: datetime,
    event_id: str | None,
) -> tuple[ChargeRecord, JournalEntry | None]:
    """Charge the customer; owe the parts (pending, or available once the order is fulfilled)."""
    if charge.charge_id in book.charges:
        raise LedgerRefused(f"charge {charge.charge_id} was already booked")
    if not 0 <= charge.amount <= MAX_AMOUNT:
        # Orders never charges outside the money cap: such a charge is forged or corrupt,
        # and booked it would overflow the 64-bit accounts every later charge adds to.
        raise LedgerRefused(f"charge {charge.charge_id} of {charge.amount} is outside the cap")
    if charge.currency != book.currency:
        raise LedgerRefused(
            f"charge {charge.charge_id} is in {charge.currency}, not {book.currency}"
        )
    split = split_charge(charge.amount, fee_bps=fee_bps, share_bps=charge.share_bps)
    record = ChargeRecord(charge, split, booked_at)
    book.charges[charge.charge_id] = record
    if not charge.amount:
        return record, None
    postings = [
        Posting("customer_receivables", None, charge.amount, "gross", charge.order_id),
        *_parts_postings(split.parts, record, sign=-1, released=book.fulfilled),
    ]
    entry = JournalEntry(
        entry_id=f"charge:{charge.charge_id}",
        kind="charge",
        booked_at=booked_at,
        currency=charge.currency,
        postings=tuple(postings),
        order_id=charge.order_id,
        charge_id=charge.charge_id,
        event_id=event_id,
    )
    return record, entry


def book_refund(
    book: OrderBook,
    *,
    refund_id: str,
    charge_id: str,
    amount: int,
    currency: str,
    booked_at: datetime,
    event_id: str | None,
) -> tuple[RefundRecord, JournalEntry | None]:
    """Give back ``amount`` of a charge, taken from each party in proportion to what it kept."""
    record = book.charges.get(charge_id)
    if record is None:
        raise LedgerRefused(f"refund {refund_id} names charge {charge_id}, unknown on this order")
    if currency != record.charge.currency:
        raise LedgerRefused(f"refund {refund_id} is in {currency}, its charge in another currency")
    already = book.refunded.get(charge_id, NO_PARTS)
    try:
        split = split_refund(amount, record.split, already)
    except ValueError as exc:
        raise LedgerRefused(f"refund {refund_id}: {exc}") from None
    book.refunded[charge_id] = already + split.parts
    refund = RefundRecord(refund_id, charge_id, book.order_id, currency, split, booked_at)
    if not amount:
        return refund, None
    postings = [
        Posting("customer_receivables", None, -amount, "gross", book.order_id),
        *_parts_postings(split.parts, record, sign=1, released=book.fulfilled),
    ]
    entry = JournalEntry(
        entry_id=f"refund:{refund_id}",
        kind="refund",
        booked_at=booked_at,
        currency=currency,
        postings=tuple(postings),
        order_id=book.order_id,
        charge_id=charge_id,
        refund_id=refund_id,
        event_id=event_id,
    )
    return refund, entry


def release(book: OrderBook, *, booked_at: datetime, event_id: str | None) -> JournalEntry | None:
    """The order is fulfilled: what it owes partners moves from pending to available."""
    if book.fulfilled:
        return None
    book.fulfilled = True
    book.status = "fulfilled"
    postings: list[Posting] = []
    for partner_id, owed in sorted(book.pending_by_partner().items()):
        if owed:
            postings.append(Posting("partner_pending", partner_id, owed, "release", book.order_id))
            postings.append(
                Posting("partner_available", partner_id, -owed, "release", book.order_id)
            )
    if not postings:
        return None
    return JournalEntry(
        entry_id=f"release:{book.order_id}",
        kind="release",
        booked_at=booked_at,
        currency=book.currency,
        postings=tuple(postings),
        order_id=book.order_id,
        event_id=event_id,
    )


class PayoutPlan(msgspec.Struct, frozen=True, gc=False):
    """What one payout pays a partner, order by order (items sum to ``amount``)."""

    partner_id: str
    currency: str
    items: tuple[tuple[str | None, int], ...]

    @property
    def amount(self) -> int:
        return sum(amount for _, amount in self.items)


def plan_payouts(available: Iterable[tuple[str, str, str | None, int]]) -> list[PayoutPlan]:
    """One payout per partner and currency whose available balance is positive.

    ``available`` holds ``(partner_id, currency, order_id, amount)``: what each
    order makes available to each partner.  A negative order (refunded after a
    payout) is netted in; a partner whose total is not positive is not paid.
    """
    grouped: dict[tuple[str, str], list[tuple[str | None, int]]] = defaultdict(list)
    for partner_id, currency, order_id, amount in available:
        if amount:
            grouped[(partner_id, currency)].append((order_id, amount))
    plans = [
        PayoutPlan(partner_id, currency, tuple(sorted(items, key=lambda item: item[0] or "")))
        for (partner_id, currency), items in sorted(grouped.items())
    ]
    return [plan for plan in plans if plan.amount > 0]


def _per_order_move(
    plan: PayoutPlan, source: AccountKind, target: AccountKind, part: Part
) -> tuple[Posting, ...]:
    postings: list[Posting] = []
    source_partner = plan.partner_id if source in PARTNER_ACCOUNTS else None
    target_partner = plan.partner_id if target in PARTNER_ACCOUNTS else None
    for order_id, amount in plan.items:
        postings.append(Posting(source, source_partner, amount, part, order_id))
        postings.append(Posting(target, target_partner, -amount, part, order_id))
    return tuple(postings)


def payout_entry(payout_id: str, plan: PayoutPlan, booked_at: datetime) -> JournalEntry:
    """Paid out: the partner's available money moves to payouts in transit, order by order."""
    return JournalEntry(
        entry_id=f"payout:{payout_id}",
        kind="payout",
        booked_at=booked_at,
        currency=plan.currency,
        postings=_per_order_move(plan, "partner_available", "payouts_in_transit", "payout"),
        payout_id=payout_id,
    )


def paid_entry(payout_id: str, plan: PayoutPlan, booked_at: datetime) -> JournalEntry:
    """The bank booked the payout: it leaves in-transit for cash."""
    return JournalEntry(
        entry_id=f"paid:{payout_id}",
        kind="paid",
        booked_at=booked_at,
        currency=plan.currency,
        postings=_per_order_move(plan, "payouts_in_transit", "cash", "paid"),
        payout_id=payout_id,
    )


def failed_entry(
    payout_id: str, plan: PayoutPlan, booked_at: datetime, *, was_paid: bool
) -> JournalEntry:
    """The bank returned the payout: its money goes back to the partner's available balance.

    From in transit, or from cash if the bank had booked the payout first;
    order by order, so a later payout run pays each order's money again.
    """
    source: AccountKind = "cash" if was_paid else "payouts_in_transit"
    return JournalEntry(
        entry_id=f"failed:{payout_id}",
        kind="failed",
        booked_at=booked_at,
        currency=plan.currency,
        postings=_per_order_move(plan, source, "partner_available", "failed"),
        payout_id=payout_id,
    )


def is_balanced(entry: JournalEntry) -> bool:
    return sum(posting.amount for posting in entry.postings) == 0


def balances(postings: Iterable[Posting]) -> Mapping[tuple[AccountKind, str | None], int]:
    """Signed balance per account (debit positive): for tests and reports."""
    totals: dict[tuple[AccountKind, str | None], int] = defaultdict(int)
    for posting in postings:
        totals[(posting.account, posting.partner_id)] += posting.amount
    return dict(totals)
