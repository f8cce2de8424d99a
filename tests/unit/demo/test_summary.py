"""The end-of-day summary reads as a report, with money in major units."""

from __future__ import annotations

from collections import Counter

from deploy.demo.bank import BankStatement, Payout, Reconciliation
from deploy.demo.checks import Balance, ThreeWay, TrialBalance
from deploy.demo.progress import bar
from deploy.demo.statements import Earnings
from deploy.demo.summary import DaySummary, FateOutcome, PartnerDay, money, render


def test_money_is_shown_in_major_units_with_separators() -> None:
    assert money(0) == "0.00"
    assert money(5) == "0.05"
    assert money(123_456_789) == "1,234,567.89"
    assert money(-1050) == "-10.50"


def day() -> DaySummary:
    summary = DaySummary(seed=7, customers=25, planned=150, placed=149, placing_seconds=5.0)
    summary.day_seconds = 41.0
    summary.refused = Counter({"422 Unprocessable": 1})
    summary.statuses = Counter({"fulfilled": 100, "confirmed": 15, "cancelled": 30, "pending": 4})
    summary.fates = [FateOutcome("late", "pending", Counter({"pending": 4}))]
    summary.fulfilment_answers = Counter({"accepted": 300, "rejected": 9})
    summary.usage_reports = 40
    isv = Earnings(charges=2, gross=20_000, fees=600, shares=13_580)
    summary.partners = [
        PartnerDay("Acme Data", "isv", isv, Balance("USD", 0, 0, 0, 13_580), 13_580),
        PartnerDay("Quiet Ltd", "reseller", None, None, 0),
    ]
    summary.payouts = [
        Payout("po_1", "prt_1", 13_580, "USD", "R1"),
        Payout("po_2", "p", 1, "USD", "R2"),
    ]
    summary.bank = BankStatement(lines=[], missing="R2", mismatched="R1")
    summary.reconciliation = Reconciliation((), ("R2", "R0"), (), ("R1",))
    summary.three_way = ThreeWay(checked=119, agreeing=119, disagreements=())
    summary.trial_balance = TrialBalance((("receivable", "USD", 100), ("fees", "USD", -100)))
    return summary


def test_the_summary_shows_orders_earnings_payouts_and_checks() -> None:
    text = render(day())
    assert "placed 149 of 150 orders in 5.0 s (30 orders/s)" in text
    assert "fulfilled      100" in text
    assert "                 300  accepted" in text
    assert "not placed       1  (422 Unprocessable)" in text
    assert "late             4  should end pending    ended 4 pending" in text
    assert "ORDERS_ACCEPTANCE_DEADLINE_SECONDS=20" in text
    acme = next(line for line in text.splitlines() if "Acme Data" in line and "ISV" in line)
    assert acme.split()[-7:] == ["2", "200.00", "6.00", "135.80", "0.00", "0.00", "135.80"]
    assert "= balance" in text
    assert "(no statement)" in text
    assert "Payout run: 2 payouts, 135.81 USD" in text
    assert "Reconciliation: 0 matched, 2 missing, 0 unexpected, 1 mismatched" in text
    assert "  missing     R0  (an earlier payout the bank has still not booked)" in text
    assert "  missing     R2  (not booked by the bank: stays in transit)" in text
    assert "  mismatched  R1  (booked with another amount: stays in transit)" in text
    assert "119 orders, 119 agree — all agree" in text
    assert "sum to 0.00 USD: zero, the books balance" in text


def test_disagreements_and_an_unbalanced_ledger_are_shouted() -> None:
    summary = day()
    summary.three_way = ThreeWay(checked=2, agreeing=1, disagreements=("o2: ledger short",))
    summary.trial_balance = TrialBalance((("receivable", "USD", 1),))
    summary.deadline_waited = True
    text = render(summary)
    assert "DISAGREEMENTS" in text
    assert "o2: ledger short" in text
    assert "NOT ZERO" in text
    assert "ORDERS_ACCEPTANCE_DEADLINE_SECONDS" not in text


def test_the_progress_bar_fills_in_proportion() -> None:
    assert bar(0, 10, label="orders placed", elapsed=0) == (
        "[..............................]  0/10 orders placed  0.0/s"
    )
    assert bar(5, 10, label="x", elapsed=2.0).startswith("[" + "#" * 15 + "." * 15 + "]  5/10")
    assert bar(0, 0, label="x", elapsed=1.0).startswith("[" + "#" * 30 + "]")
