"""A partner's statement, read into earnings: fees, shares and margins (pure).

The contract fixes only that a line that comes from a charge carries
``split: {gross, fee_bps, fee, share_bps, share, margin, rule}`` and that lines
name their order or payout; every other field name is settlement's choice.  So
all guessing about the line's shape lives in ``read_statement_line`` and
nowhere else: when settlement's field names settle, that one function changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Field names settlement might use for what a line is and whom it concerns.  Every
# kind-like field found is kept ("charge share"); references are tried in order,
# the most specific first, so two charges of one order stay two charges.
_KIND_FIELDS = ("kind", "part", "type", "entry_type", "category")
_REFERENCE_FIELDS = ("charge_id", "refund_id", "order_id", "payout_id", "reference", "id")
_AMOUNT_FIELDS = ("amount", "net", "credit")


def money_amount(value: object) -> int | None:
    """Minor units from ``{"amount": int, ...}`` or a bare int; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return money_amount(value.get("amount"))
    return None


@dataclass(frozen=True)
class Split:
    gross: int
    fee_bps: int
    fee: int
    share_bps: int
    share: int
    margin: int
    rule: str


@dataclass(frozen=True)
class StatementEntry:
    kind: str  # lower-case, "" when the line does not say
    amount: int | None  # signed minor units credited (+) or debited (-) to the partner
    reference: str | None
    split: Split | None = None
    component_partner_id: str | None = None
    owner_id: str | None = None


def _text(raw: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        value = raw.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _split(value: object) -> Split | None:
    if not isinstance(value, Mapping):
        return None
    numbers = {
        name: money_amount(value.get(name))
        for name in ("gross", "fee_bps", "fee", "share_bps", "share", "margin")
    }
    if any(number is None for number in numbers.values()):
        return None
    return Split(
        gross=numbers["gross"] or 0,
        fee_bps=numbers["fee_bps"] or 0,
        fee=numbers["fee"] or 0,
        share_bps=numbers["share_bps"] or 0,
        share=numbers["share"] or 0,
        margin=numbers["margin"] or 0,
        rule=str(value.get("rule", "")),
    )


def read_statement_line(raw: object) -> StatementEntry | None:
    """The one place that knows (guesses) a statement line's field names."""
    if not isinstance(raw, Mapping):
        return None
    amount = next(
        (
            money_amount(raw[name])
            for name in _AMOUNT_FIELDS
            if money_amount(raw.get(name)) is not None
        ),
        None,
    )
    if amount is None and money_amount(raw.get("debit")) is not None:
        amount = -(money_amount(raw.get("debit")) or 0)
    return StatementEntry(
        kind=" ".join(
            value.lower() for name in _KIND_FIELDS if isinstance(value := raw.get(name), str)
        ),
        amount=amount,
        reference=_text(raw, _REFERENCE_FIELDS),
        split=_split(raw.get("split")),
        component_partner_id=_text(raw, ("component_partner_id", "partner_id")),
        owner_id=_text(raw, ("owner_id",)),
    )


@dataclass
class Earnings:
    """One partner's day.  ``gross`` and ``fees`` are of the charges it took part in."""

    charges: int = 0
    gross: int = 0
    fees: int = 0
    shares: int = 0
    margins: int = 0
    refunds: int = 0
    payouts: int = 0
    other: int = 0
    lines: int = 0
    unreadable: int = 0
    _seen: set[tuple[str | None, Split]] = field(default_factory=set, repr=False)

    @property
    def net(self) -> int:
        """What the day left the partner with before payouts (its balance should agree)."""
        return self.shares + self.margins + self.refunds + self.other


def _cut(partner_id: str, entry: StatementEntry, split: Split) -> tuple[int, int]:
    """(share, margin) this partner earned from one split line.

    Best evidence first: who the line says the component partner and the owner
    are; then the line's kind; then which part of the split its amount equals.
    """
    amount = entry.amount
    is_component = entry.component_partner_id == partner_id
    is_owner = entry.owner_id == partner_id
    if is_component or is_owner:
        return (split.share if is_component else 0, split.margin if is_owner else 0)
    if "margin" in entry.kind:
        return (0, split.margin if amount is None else amount)
    if "share" in entry.kind:
        return (split.share if amount is None else amount, 0)
    if amount is None or amount == split.share:
        return (split.share, 0)
    if amount == split.margin:
        return (0, split.margin)
    # A gross "charge" line on the owner's statement: what stays with the owner
    # is the margin, and on its own component (share 100 %) the share.
    return (split.share, 0) if split.share_bps == 10_000 else (0, split.margin)


def earnings(partner_id: str, lines: Iterable[object]) -> Earnings:
    """Add up a partner's statement lines, whatever else they carry."""
    total = Earnings()
    for raw in lines:
        total.lines += 1
        entry = read_statement_line(raw)
        if entry is None:
            total.unreadable += 1
            continue
        if "refund" in entry.kind or "reversal" in entry.kind:
            # A refund reverses what was earned; its split (if any) is the charge's.
            if entry.amount is not None:
                total.refunds += entry.amount
            elif entry.split is not None:
                total.refunds -= sum(_cut(partner_id, entry, entry.split))
            else:
                total.unreadable += 1
        elif entry.split is not None:
            if (entry.reference, entry.split) not in total._seen:
                total._seen.add((entry.reference, entry.split))
                total.charges += 1
                total.gross += entry.split.gross
                total.fees += entry.split.fee
            share, margin = _cut(partner_id, entry, entry.split)
            total.shares += share
            total.margins += margin
        elif entry.amount is None:
            total.unreadable += 1
        elif "payout" in entry.kind or "paid" in entry.kind.split():
            # Money on its way to (or at) the partner's bank: not earnings.
            total.payouts += entry.amount
        else:
            total.other += entry.amount
    return total


def statement_items(body: object) -> list[object]:
    """The lines of a statement reply: a bare list, ``items`` or ``lines``."""
    if isinstance(body, list):
        return list(body)
    if isinstance(body, Mapping):
        for name in ("items", "lines", "entries"):
            value = body.get(name)
            if isinstance(value, list):
                return list(value)
    return []
