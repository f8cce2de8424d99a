"""Payouts, the bank statement that should book them, and what reconciling found (pure).

The demo's bank is imperfect on purpose: of the payouts it was sent it books
all but one (that payout stays ``missing``) and books one with another amount
(``mismatched``, as if a wire fee had been taken), so the reconciliation has
something to find.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deploy.demo.statements import money_amount

# What the bank takes off the mismatched transfer: one dollar, a wire fee.
WIRE_FEE = 100


@dataclass(frozen=True)
class Payout:
    id: str
    partner_id: str
    amount: int
    currency: str
    reference: str
    status: str = "pending"


def read_payouts(body: object) -> list[Payout]:
    """``{payouts: [...]}`` or ``{items: [...]}``; entries without a reference are skipped."""
    items: object = []
    if isinstance(body, Mapping):
        items = body.get("payouts", body.get("items", []))
    payouts: list[Payout] = []
    for raw in items if isinstance(items, list) else []:
        if not isinstance(raw, Mapping):
            continue
        amount = money_amount(raw.get("amount"))
        reference = raw.get("reference")
        if amount is None or not isinstance(reference, str):
            continue
        currency = raw.get("currency")
        if isinstance(raw.get("amount"), Mapping):
            currency = raw["amount"].get("currency", currency)
        payouts.append(
            Payout(
                id=str(raw.get("id", reference)),
                partner_id=str(raw.get("partner_id", "")),
                amount=amount,
                currency=currency if isinstance(currency, str) else "USD",
                reference=reference,
                status=str(raw.get("status", "pending")),
            )
        )
    return payouts


@dataclass(frozen=True)
class BankStatement:
    lines: list[dict[str, object]]
    missing: str | None  # the reference the bank did not book
    mismatched: str | None  # the reference booked with another amount


def bank_statement(payouts: Sequence[Payout], *, booked_at: str, seed: int) -> BankStatement:
    """The bank's lines for ``payouts``, one left out and one with a wrong amount.

    With one payout only the mismatch is shown; with none the statement is empty.
    """
    ordered = sorted(payouts, key=lambda payout: payout.reference)
    rng = random.Random(seed)
    picked = rng.sample(ordered, k=min(2, len(ordered)))
    mismatched = picked[0].reference if picked else None
    missing = picked[1].reference if len(picked) > 1 else None
    lines: list[dict[str, object]] = []
    for payout in ordered:
        if payout.reference == missing:
            continue
        amount = payout.amount
        if payout.reference == mismatched:
            amount = amount - WIRE_FEE if amount > WIRE_FEE else amount + 1
        lines.append({"reference": payout.reference, "amount": amount, "booked_at": booked_at})
    return BankStatement(lines=lines, missing=missing, mismatched=mismatched)


@dataclass(frozen=True)
class Reconciliation:
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]


def read_reconciliation(body: object) -> Reconciliation:
    """The four lists of ``POST /v1/reconciliations``, as references."""

    def references(name: str) -> tuple[str, ...]:
        items = body.get(name, []) if isinstance(body, Mapping) else []
        return tuple(
            str(item.get("reference", "?")) if isinstance(item, Mapping) else str(item)
            for item in (items if isinstance(items, list) else [])
        )

    return Reconciliation(
        matched=references("matched"),
        missing=references("missing"),
        unexpected=references("unexpected"),
        mismatched=references("mismatched"),
    )
