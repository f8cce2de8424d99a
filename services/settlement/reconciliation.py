"""What a bank statement says about payouts (pure): each line's outcome and each status move.

No I/O.  A statement line names a payout by its reference, and says by its
``kind`` whether the bank ``booked`` the payout (the default) or ``returned``
it.  The sign of an amount never means a return: many banks export outgoing
transfers as negative numbers, and reading those as returns would fail every
payout in transit and pay its money again.  Per payout:

* a ``booked`` line with the payout's amount is the bank paying it out: a
  pending payout is ``matched`` and becomes ``paid``;
* a ``returned`` line with the payout's amount (positive: the sum the bank
  gives back; a closed account, a wrong IBAN — Stripe's ``payout.failed``): a
  pending or paid payout is ``returned`` and becomes ``failed``, its money
  back in the partner's available balance;
* a booking or return the payout's status already records (a statement posted
  again, or overlapping an earlier one) is ``already_reconciled``: it moves
  nothing, and says so instead of claiming a new match;
* a line of either kind with any other amount — the negative of the payout's
  amount included — is ``mismatched`` (the payout stays as it is);
* a second booking or return line for one payout, or a line naming no payout,
  is ``unexpected``.

Of the lines of one kind naming one payout, the first with its amount is the
one compared (else the first of that kind), so the lines' order never decides
whether a payout was paid or returned.  A failed payout never becomes paid.

``missing`` are payouts still in transit after the statement that no line
names, made on or before the statement's latest ``booked_at``: a payout sent
after the last booking the statement shows could not be on it yet, and an
empty statement expects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from shared.contracts.payouts import PayoutStatus

Move = Literal["paid", "failed"]
# What the bank did with a payout: booked it out, or returned it.
LineKind = Literal["booked", "returned"]


@dataclass(frozen=True)
class BankLine:
    reference: str
    amount: int  # minor units of the payout's currency, as the bank shows it
    booked_at: datetime
    kind: LineKind = "booked"


@dataclass(frozen=True)
class PayoutOnRecord:
    payout_id: str
    reference: str
    partner_id: str
    amount: int
    currency: str
    status: PayoutStatus
    as_of: datetime
    created_at: datetime


@dataclass(frozen=True)
class StatusMove:
    """A payout's status moves, and the ledger with it, at the bank's ``booked_at``."""

    payout: PayoutOnRecord
    to: Move
    booked_at: datetime
    # For ``failed``: whether the money comes back from cash (the bank had booked
    # the payout) rather than from in transit.
    was_paid: bool = False


@dataclass(frozen=True)
class LineOutcome:
    reference: str
    expected: int | None
    booked: int | None
    # The payout's currency; None for a line naming no payout (the bank's amount
    # is then in a currency no one told us).
    currency: str | None = None
    payout_id: str | None = None
    # The payout's status once this statement is applied.
    status: PayoutStatus | None = None
    kind: LineKind = "booked"


@dataclass
class Outcomes:
    matched: list[LineOutcome] = field(default_factory=list)
    returned: list[LineOutcome] = field(default_factory=list)
    already_reconciled: list[LineOutcome] = field(default_factory=list)
    mismatched: list[LineOutcome] = field(default_factory=list)
    unexpected: list[LineOutcome] = field(default_factory=list)
    moves: list[StatusMove] = field(default_factory=list)
    # Every reference a line named: those payouts cannot be missing.
    named: set[str] = field(default_factory=set)
    # The statement's latest booked_at; None for an empty statement.
    statement_end: datetime | None = None


def _compared(kind: LineKind, payout: PayoutOnRecord, lines: list[BankLine]) -> int | None:
    """Index (into ``lines``) of the ``kind`` line compared for ``payout``, if any."""
    of_kind = [index for index, line in enumerate(lines) if line.kind == kind]
    exact = [index for index in of_kind if lines[index].amount == payout.amount]
    return next(iter(exact or of_kind), None)


def reconcile_statement(lines: list[BankLine], payouts: dict[str, PayoutOnRecord]) -> Outcomes:
    """Every line's outcome, and the status moves to book, in the statement's order."""
    out = Outcomes(statement_end=max((line.booked_at for line in lines), default=None))
    by_reference: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        out.named.add(line.reference)
        if line.reference in payouts:
            by_reference.setdefault(line.reference, []).append(index)
    status = {reference: payouts[reference].status for reference in by_reference}
    # Per payout, which list each of its chosen lines goes to: decided deposit
    # first (a transfer is booked before it can come back), reported in line order.
    decided: dict[int, list[LineOutcome]] = {}
    for reference, indexes in by_reference.items():
        payout = payouts[reference]
        its_lines = [lines[i] for i in indexes]
        deposit = _compared("booked", payout, its_lines)
        returned = _compared("returned", payout, its_lines)
        if deposit is not None:
            line = lines[indexes[deposit]]
            if line.amount != payout.amount:
                decided[indexes[deposit]] = out.mismatched
            elif status[reference] == "pending":
                decided[indexes[deposit]] = out.matched
                out.moves.append(StatusMove(payout, "paid", line.booked_at))
                status[reference] = "paid"
            else:
                decided[indexes[deposit]] = out.already_reconciled
        if returned is not None:
            line = lines[indexes[returned]]
            if line.amount != payout.amount:
                decided[indexes[returned]] = out.mismatched
            elif status[reference] == "failed":
                decided[indexes[returned]] = out.already_reconciled
            else:
                decided[indexes[returned]] = out.returned
                out.moves.append(
                    StatusMove(payout, "failed", line.booked_at, status[reference] == "paid")
                )
                status[reference] = "failed"
    for index, line in enumerate(lines):
        named = payouts.get(line.reference)
        if named is None:
            out.unexpected.append(LineOutcome(line.reference, None, line.amount, kind=line.kind))
            continue
        bucket = decided.get(index, out.unexpected)
        bucket.append(
            LineOutcome(
                line.reference,
                # A second booking of one payout was expected of no line.
                None if bucket is out.unexpected else named.amount,
                line.amount,
                named.currency,
                named.payout_id,
                status[line.reference],
                line.kind,
            )
        )
    return out


def is_missing(payout: PayoutOnRecord, outcomes: Outcomes) -> bool:
    """Still in transit, not on the statement, though made before its last booking."""
    return (
        payout.status == "pending"
        and payout.reference not in outcomes.named
        and outcomes.statement_end is not None
        and payout.created_at <= outcomes.statement_end
    )
