"""What a bank statement says about payouts: each line's list and each status move (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.settlement.reconciliation import (
    BankLine,
    PayoutOnRecord,
    is_missing,
    reconcile_statement,
)
from shared.contracts.payouts import PayoutStatus

MADE = datetime(2026, 11, 2, 9, tzinfo=UTC)
NEXT_DAY = MADE + timedelta(days=1)


def payout(reference: str, status: PayoutStatus = "pending", amount: int = 500) -> PayoutOnRecord:
    return PayoutOnRecord(
        payout_id=f"pay_{reference}",
        reference=reference,
        partner_id="ptr_a",
        amount=amount,
        currency="EUR",
        status=status,
        as_of=MADE,
        created_at=MADE,
    )


def lists(lines: list[BankLine], *payouts: PayoutOnRecord) -> dict[str, list[str]]:
    out = reconcile_statement(lines, {p.reference: p for p in payouts})
    named = ("matched", "returned", "already_reconciled", "mismatched", "unexpected")
    return {name: [o.reference for o in getattr(out, name)] for name in named if getattr(out, name)}


def test_a_pending_payout_booked_with_its_amount_is_matched_and_paid() -> None:
    out = reconcile_statement([BankLine("A", 500, NEXT_DAY)], {"A": payout("A")})
    assert [(o.reference, o.currency, o.status) for o in out.matched] == [("A", "EUR", "paid")]
    assert [(m.payout.reference, m.to, m.booked_at) for m in out.moves] == [("A", "paid", NEXT_DAY)]


def returned(reference: str, amount: int = 500) -> BankLine:
    return BankLine(reference, amount, NEXT_DAY, kind="returned")


@pytest.mark.parametrize(
    ("status", "line"),
    [("paid", BankLine("A", 500, NEXT_DAY)), ("failed", BankLine("A", 500, NEXT_DAY)),
     ("failed", returned("A"))],
)  # fmt: skip
def test_what_an_earlier_statement_recorded_is_already_reconciled_and_moves_nothing(
    status: PayoutStatus, line: BankLine
) -> None:
    out = reconcile_statement([line], {"A": payout("A", status)})
    assert [(o.reference, o.status) for o in out.already_reconciled] == [("A", status)]
    assert (out.matched, out.returned, out.moves) == ([], [], [])


@pytest.mark.parametrize("status", ["pending", "paid"])
def test_a_returned_line_with_the_payouts_amount_is_the_bank_returning_it(
    status: PayoutStatus,
) -> None:
    out = reconcile_statement([returned("A")], {"A": payout("A", status)})
    assert [(o.reference, o.status, o.kind) for o in out.returned] == [("A", "failed", "returned")]
    assert [(m.to, m.was_paid) for m in out.moves] == [("failed", status == "paid")]


@pytest.mark.parametrize("status", ["pending", "paid"])
def test_the_negative_of_a_payouts_amount_is_never_a_return(status: PayoutStatus) -> None:
    # Banks often export outgoing transfers as negative numbers: such a line
    # failing the payout would make its money available and pay it twice.
    for line in (BankLine("A", -500, NEXT_DAY), returned("A", -500)):
        out = reconcile_statement([line], {"A": payout("A", status)})
        assert [(o.reference, o.status) for o in out.mismatched] == [("A", status)]
        assert (out.returned, out.moves) == ([], [])


def test_a_booking_and_a_return_in_one_statement_pay_then_fail_whatever_their_order() -> None:
    for lines in (
        [returned("A"), BankLine("A", 500, NEXT_DAY)],
        [BankLine("A", 500, NEXT_DAY), returned("A")],
    ):
        out = reconcile_statement(lines, {"A": payout("A")})
        assert [(m.to, m.was_paid) for m in out.moves] == [("paid", False), ("failed", True)]
        assert [o.status for o in out.matched + out.returned] == ["failed", "failed"]


def test_the_return_with_the_payouts_amount_is_compared_whatever_the_line_order() -> None:
    out = reconcile_statement([returned("A", 499), returned("A")], {"A": payout("A")})
    assert [o.booked for o in out.returned] == [500]
    assert [o.booked for o in out.unexpected] == [499]
    assert [m.to for m in out.moves] == ["failed"]


def test_a_second_booking_of_one_payout_is_unexpected_but_keeps_its_currency() -> None:
    lines = [BankLine("A", 499, NEXT_DAY), BankLine("A", 500, NEXT_DAY)]
    out = reconcile_statement(lines, {"A": payout("A")})
    assert [o.reference for o in out.matched] == ["A"]
    [twice] = out.unexpected
    assert (twice.booked, twice.currency, twice.expected) == (499, "EUR", None)


def test_a_line_naming_no_payout_has_no_currency() -> None:
    out = reconcile_statement([BankLine("NOBODY", 7, NEXT_DAY)], {})
    [line] = out.unexpected
    assert (line.booked, line.currency, line.payout_id) == (7, None, None)


def test_other_amounts_are_mismatched() -> None:
    assert lists([BankLine("A", 480, NEXT_DAY)], payout("A")) == {"mismatched": ["A"]}
    assert lists([BankLine("A", -480, NEXT_DAY)], payout("A")) == {"mismatched": ["A"]}
    assert lists([returned("A", 480)], payout("A")) == {"mismatched": ["A"]}


def test_missing_is_only_what_the_statement_could_show() -> None:
    out = reconcile_statement([BankLine("B", 500, NEXT_DAY)], {"B": payout("B")})
    assert out.statement_end == NEXT_DAY
    assert is_missing(payout("A"), out)
    assert not is_missing(payout("B"), out)  # named by a line
    assert not is_missing(payout("A", "paid"), out)
    made_later = replace(payout("A"), created_at=NEXT_DAY + timedelta(1))
    assert not is_missing(made_later, out)
    assert not is_missing(payout("A"), reconcile_statement([], {}))  # empty: expects nothing
