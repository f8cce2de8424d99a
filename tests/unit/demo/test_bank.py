"""The demo's bank leaves one payout out and books one with another amount."""

from __future__ import annotations

from deploy.demo.bank import (
    WIRE_FEE,
    Payout,
    bank_statement,
    read_payouts,
    read_reconciliation,
)


def payouts(count: int) -> list[Payout]:
    return [
        Payout(
            id=f"po_{n}",
            partner_id=f"prt_{n}",
            amount=10_000 * (n + 1),
            currency="USD",
            reference=f"REF-{n}",
        )
        for n in range(count)
    ]


def test_one_payout_is_missing_one_mismatched_and_the_rest_booked_as_sent() -> None:
    sent = payouts(5)
    statement = bank_statement(sent, booked_at="2026-11-22T12:00:00Z", seed=7)
    booked = {str(line["reference"]): line["amount"] for line in statement.lines}
    assert statement.missing is not None
    assert statement.mismatched is not None
    assert statement.missing != statement.mismatched
    assert statement.missing not in booked
    by_reference = {payout.reference: payout.amount for payout in sent}
    assert booked[statement.mismatched] == by_reference[statement.mismatched] - WIRE_FEE
    matched = set(booked) - {statement.mismatched}
    assert len(matched) == 3
    assert all(booked[reference] == by_reference[reference] for reference in matched)
    assert all(line["booked_at"] == "2026-11-22T12:00:00Z" for line in statement.lines)


def test_the_same_seed_makes_the_same_statement_whatever_order_payouts_come_in() -> None:
    sent = payouts(6)
    forward = bank_statement(sent, booked_at="t", seed=3)
    backward = bank_statement(list(reversed(sent)), booked_at="t", seed=3)
    assert forward == backward


def test_a_single_payout_is_only_mismatched_and_none_leaves_the_statement_empty() -> None:
    single = bank_statement(payouts(1), booked_at="t", seed=1)
    assert (single.missing, single.mismatched) == (None, "REF-0")
    assert single.lines == [{"reference": "REF-0", "amount": 10_000 - WIRE_FEE, "booked_at": "t"}]
    empty = bank_statement([], booked_at="t", seed=1)
    assert (empty.lines, empty.missing, empty.mismatched) == ([], None, None)


def test_a_payout_smaller_than_the_fee_is_booked_one_cent_more() -> None:
    tiny = [Payout("po", "prt", 50, "USD", "REF")]
    assert bank_statement(tiny, booked_at="t", seed=0).lines[0]["amount"] == 51


def test_payouts_are_read_with_money_objects_or_bare_amounts() -> None:
    body = {
        "payouts": [
            {
                "id": "po_1",
                "partner_id": "prt_1",
                "reference": "R1",
                "amount": {"amount": 1234, "currency": "EUR"},
            },
            {"id": "po_2", "partner_id": "prt_2", "reference": "R2", "amount": 99},
            {"id": "po_3", "partner_id": "prt_3", "amount": 5},
            "garbage",
        ]
    }
    assert read_payouts(body) == [
        Payout("po_1", "prt_1", 1234, "EUR", "R1"),
        Payout("po_2", "prt_2", 99, "USD", "R2"),
    ]
    assert (
        read_payouts({"items": [{"reference": "R", "amount": 1, "status": "paid"}]})[0].status
        == "paid"
    )
    assert read_payouts(None) == []


def test_reconciliation_results_are_read_as_references() -> None:
    body = {
        "id": "rec_1",
        "matched": [{"reference": "A", "expected": 1, "booked": 1}],
        "missing": [{"reference": "B", "expected": 2}],
        "unexpected": [],
        "mismatched": [{"reference": "C", "expected": 3, "booked": 2}],
    }
    result = read_reconciliation(body)
    assert (result.matched, result.missing, result.unexpected, result.mismatched) == (
        ("A",),
        ("B",),
        (),
        ("C",),
    )
