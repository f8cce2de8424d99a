"""The end-of-day report: what the day produced, rendered as plain text (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from deploy.demo.bank import BankStatement, Payout, Reconciliation
from deploy.demo.checks import Balance, ThreeWay, TrialBalance
from deploy.demo.plan import Fate
from deploy.demo.statements import Earnings

STATUSES = ("fulfilled", "confirmed", "pending", "cancelled")
KIND_LABELS = {"isv": "ISV", "managed_service": "MSP", "integrator": "integrator"}


def money(amount: int) -> str:
    """Minor units as ``-1,234.56``; integer arithmetic only, money never touches a float."""
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 100)
    return f"{sign}{major:,}.{minor:02d}"


@dataclass(frozen=True)
class PartnerDay:
    name: str
    kind: str
    earnings: Earnings | None
    balance: Balance | None
    paid_out: int


@dataclass(frozen=True)
class FateOutcome:
    fate: Fate
    expected: str
    statuses: Counter[str]


@dataclass
class DaySummary:
    seed: int
    customers: int
    planned: int
    placed: int
    placing_seconds: float
    day_seconds: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    fates: list[FateOutcome] = field(default_factory=list)
    fulfilment_answers: Counter[str] = field(default_factory=Counter)
    deadline_seconds: float | None = None  # acceptance deadline the orders service applied
    deadline_waited: bool = False
    usage_reports: int = 0
    partners: list[PartnerDay] = field(default_factory=list)
    payouts: list[Payout] = field(default_factory=list)
    bank: BankStatement | None = None
    reconciliation: Reconciliation | None = None
    three_way: ThreeWay | None = None
    trial_balance: TrialBalance | None = None
    notes: list[str] = field(default_factory=list)


def render(day: DaySummary) -> str:
    return "\n".join(
        [
            *_headline(day),
            "",
            *_orders(day),
            "",
            *_earnings(day.partners),
            "",
            *_balances(day.partners),
            "",
            *_payouts(day),
            "",
            *_checks(day),
            *(["", "Notes", *(f"  - {note}" for note in day.notes)] if day.notes else []),
        ]
    )


def _headline(day: DaySummary) -> list[str]:
    rate = day.placed / day.placing_seconds if day.placing_seconds > 0 else 0.0
    return [
        f"A co-sell day (seed {day.seed}): {day.customers} customers placed "
        f"{day.placed} of {day.planned} orders in {day.placing_seconds:.1f} s "
        f"({rate:.0f} orders/s); the whole day took {day.day_seconds:.0f} s.",
    ]


def _orders(day: DaySummary) -> list[str]:
    seen = [status for status in STATUSES if day.statuses[status]]
    others = sorted(set(day.statuses) - set(STATUSES))
    lines = ["Orders by status"]
    lines += [f"  {status:<12}{day.statuses[status]:>6}" for status in [*seen, *others]]
    for reason, count in day.refused.most_common():
        lines.append(f"  {'not placed':<12}{count:>6}  ({reason})")
    if day.fates:
        lines += ["", "  how each order was meant to end, and how it did"]
        for outcome in day.fates:
            got = ", ".join(f"{count} {status}" for status, count in outcome.statuses.most_common())
            lines.append(
                f"  {outcome.fate:<12}{outcome.statuses.total():>6}  "
                f"should end {outcome.expected:<10} ended {got}"
            )
    if day.fulfilment_answers:
        lines += ["", "  what the partners did with their fulfilment requests"]
        lines += [f"  {count:>18}  {what}" for what, count in day.fulfilment_answers.most_common()]
    if day.usage_reports:
        lines.append(f"  usage reported: {day.usage_reports} meter readings")
    if day.deadline_seconds is not None:
        lines.append(f"  acceptance deadline: {_duration(day.deadline_seconds)} after placing")
    if day.statuses["pending"] and not day.deadline_waited:
        lines += [
            "  pending orders wait on a partner that never answered; orders cancels them at",
            "  its acceptance deadline (48 h by default). To watch it fire during the day:",
            "  make stop && ORDERS_ACCEPTANCE_DEADLINE_SECONDS=20 make run && make demo",
        ]
    return lines


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


def _earnings(partners: Sequence[PartnerDay]) -> list[str]:
    lines = [
        "Earnings, USD (from each partner's statement; gross and fee are of the "
        "charges it took part in)",
        f"  {'partner':<24}{'kind':<11}{'charges':>8}{'gross':>13}{'fee':>11}"
        f"{'share':>13}{'margin':>12}{'refunds':>11}{'net':>13}",
    ]
    for day in partners:
        e = day.earnings
        kind = KIND_LABELS.get(day.kind, day.kind)
        if e is None:
            lines.append(f"  {day.name:<24}{kind:<11}  (no statement)")
            continue
        lines.append(
            f"  {day.name:<24}{kind:<11}{e.charges:>8}{money(e.gross):>13}"
            f"{money(e.fees):>11}{money(e.shares):>13}{money(e.margins):>12}"
            f"{money(e.refunds):>11}{money(e.net):>13}"
        )
    return lines


def _balances(partners: Sequence[PartnerDay]) -> list[str]:
    lines = [
        "Balances, USD (after the payout run and the reconciliation)",
        f"  {'partner':<24}{'pending':>14}{'available':>12}{'in transit':>14}{'paid':>14}"
        f"{'paid out':>14}  statement",
    ]
    for day in partners:
        b = day.balance
        if b is None:
            lines.append(f"  {day.name:<24}  (no balance)")
            continue
        agrees = ""
        if day.earnings is not None:
            agrees = "= balance" if day.earnings.net == b.total else "≠ balance"
        lines.append(
            f"  {day.name:<24}{money(b.pending):>14}{money(b.available):>12}"
            f"{money(b.in_transit):>14}{money(b.paid):>14}{money(day.paid_out):>14}  {agrees}"
        )
    return lines


def _payouts(day: DaySummary) -> list[str]:
    total = sum(payout.amount for payout in day.payouts)
    lines = [f"Payout run: {len(day.payouts)} payouts, {money(total)} USD"]
    if day.bank is not None:
        lines.append(
            f"Bank statement: {len(day.bank.lines)} lines for {len(day.payouts)} payouts "
            "(the demo's bank leaves one out and books one 1.00 short)"
        )
    r = day.reconciliation
    if r is None:
        return lines
    lines.append(
        f"Reconciliation: {len(r.matched)} matched, {len(r.missing)} missing, "
        f"{len(r.unexpected)} unexpected, {len(r.mismatched)} mismatched"
    )
    today = {payout.reference for payout in day.payouts}
    earlier = "an earlier payout the bank has still not booked"
    why = {
        "missing": "not booked by the bank: stays in transit",
        "mismatched": "booked with another amount: stays in transit",
        "unexpected": "booked, but no such payout",
    }
    for what, references in (
        ("missing", r.missing),
        ("mismatched", r.mismatched),
        ("unexpected", r.unexpected),
    ):
        lines += [
            f"  {what:<11} {reference}  "
            f"({why[what] if reference in today or what == 'unexpected' else earlier})"
            # Today's first: they are the ones the demo's bank got wrong on purpose.
            for reference in sorted(references, key=lambda reference: reference not in today)[:3]
        ]
        if len(references) > 3:
            lines.append(f"  {what:<11} ... and {len(references) - 3} more")
    return lines


def _checks(day: DaySummary) -> list[str]:
    lines: list[str] = []
    three = day.three_way
    if three is None:
        lines.append("Three-way check: not available")
    else:
        verdict = "all agree" if three.checked == three.agreeing else "DISAGREEMENTS"
        lines.append(
            f"Three-way check (orders, ledger, payouts): {three.checked} orders, "
            f"{three.agreeing} agree — {verdict}"
        )
        lines += [f"  {what}" for what in three.disagreements[:5]]
    trial = day.trial_balance
    if trial is None:
        lines.append("Trial balance: not available")
    else:
        sums = ", ".join(f"{money(total)} {currency}" for currency, total in trial.sums().items())
        verdict = "zero, the books balance" if trial.balanced else "NOT ZERO"
        lines.append(
            f"Trial balance: {len(trial.accounts)} accounts sum to {sums or '-'}: {verdict}"
        )
    return lines
