"""Earnings are read from statement lines whatever settlement names their other fields."""

from __future__ import annotations

from typing import Any

from deploy.demo.statements import (
    Split,
    earnings,
    money_amount,
    read_statement_line,
    statement_items,
)

ISV, OWNER = "prt_isv", "prt_owner"


def split(gross: int, share_bps: int) -> dict[str, Any]:
    """The contract's split with the default 3 % fee, rounded down."""
    fee = gross * 300 // 10_000
    share = (gross - fee) * share_bps // 10_000
    return {
        "gross": gross,
        "fee_bps": 300,
        "fee": fee,
        "share_bps": share_bps,
        "share": share,
        "margin": gross - fee - share,
        "rule": "v1",
    }


def test_money_is_read_from_money_objects_and_bare_integers_only() -> None:
    assert money_amount({"amount": 125, "currency": "USD"}) == 125
    assert money_amount(-7) == -7
    assert money_amount(True) is None
    assert money_amount("12") is None
    assert money_amount(1.5) is None


def test_share_and_margin_lines_named_by_kind() -> None:
    co_sold = split(10_000, 7000)  # fee 300, share 6790, margin 2910
    isv = earnings(
        ISV,
        [
            {
                "kind": "co_sell_share",
                "order_id": "ord_1",
                "amount": {"amount": 6790, "currency": "USD"},
                "split": co_sold,
            }
        ],
    )
    owner = earnings(
        OWNER, [{"kind": "margin", "order_id": "ord_1", "amount": 2910, "split": co_sold}]
    )
    assert (isv.charges, isv.gross, isv.fees, isv.shares, isv.margins) == (1, 10_000, 300, 6790, 0)
    assert (owner.shares, owner.margins, owner.net) == (0, 2910, 2910)
    assert isv.net + owner.net + co_sold["fee"] == co_sold["gross"]


def test_lines_that_name_the_component_partner_and_owner_are_attributed_by_them() -> None:
    own = split(5_000, 10_000)
    co_sold = split(10_000, 9000)
    lines = [
        {
            "type": "charge",
            "order_id": "ord_1",
            "amount": 4850,
            "split": own,
            "partner_id": OWNER,
            "owner_id": OWNER,
        },
        {
            "type": "charge",
            "order_id": "ord_1",
            "amount": 970,
            "split": co_sold,
            "partner_id": "prt_integrator",
            "owner_id": OWNER,
        },
    ]
    owner = earnings(OWNER, lines)
    assert owner.shares == own["share"] == 4850
    assert owner.margins == co_sold["margin"] == 970
    assert owner.gross == 15_000


def test_without_kind_or_parties_the_amount_tells_share_from_margin() -> None:
    co_sold = split(10_000, 7000)
    assert earnings(ISV, [{"amount": 6790, "split": co_sold}]).shares == 6790
    assert earnings(OWNER, [{"amount": 2910, "split": co_sold}]).margins == 2910


def test_the_same_charge_twice_on_one_statement_counts_its_gross_once() -> None:
    own = split(5_000, 10_000)
    lines = [
        {"kind": "share", "order_id": "ord_1", "amount": 4850, "split": own},
        {"kind": "margin", "order_id": "ord_1", "amount": 0, "split": own},
    ]
    day = earnings(OWNER, lines)
    assert (day.charges, day.gross, day.fees, day.shares, day.margins) == (1, 5_000, 150, 4850, 0)


def test_refunds_payouts_and_unreadable_lines_are_kept_apart() -> None:
    co_sold = split(10_000, 7000)
    lines: list[object] = [
        {"kind": "share", "order_id": "ord_1", "amount": 6790, "split": co_sold},
        {"kind": "refund", "order_id": "ord_1", "amount": -6790, "split": co_sold},
        {"kind": "share", "order_id": "ord_2", "amount": 6790, "split": co_sold},
        {"kind": "payout", "payout_id": "po_1", "amount": {"amount": -6790, "currency": "USD"}},
        {"kind": "adjustment", "reference": "x", "amount": 10},
        {"kind": "mystery"},
        "not a line",
    ]
    day = earnings(ISV, lines)
    assert (day.shares, day.refunds, day.payouts, day.other) == (13_580, -6790, -6790, 10)
    assert day.net == 6800
    assert (day.lines, day.unreadable) == (7, 2)


def test_a_refund_without_an_amount_reverses_the_partners_cut_of_its_split() -> None:
    co_sold = split(10_000, 7000)
    day = earnings(ISV, [{"kind": "refund", "split": co_sold, "partner_id": ISV}])
    assert day.refunds == -6790


def test_a_malformed_split_is_no_split() -> None:
    entry = read_statement_line({"kind": "share", "amount": 5, "split": {"gross": 10}})
    assert entry is not None
    assert entry.split is None
    full = read_statement_line({"split": split(100, 10_000), "debit": 40})
    assert full is not None
    assert full.amount == -40
    assert full.split == Split(
        gross=100, fee_bps=300, fee=3, share_bps=10_000, share=97, margin=0, rule="v1"
    )


def test_statement_pages_are_read_as_lists_items_or_lines() -> None:
    assert statement_items([1, 2]) == [1, 2]
    assert statement_items({"items": [1], "next_cursor": None}) == [1]
    assert statement_items({"lines": [2]}) == [2]
    assert statement_items({"partner_id": "p"}) == []


def test_a_ledger_statement_with_releases_payouts_and_bank_matches_nets_to_the_balance() -> None:
    """The shape a double-entry settlement gives: one line per posting on a partner account."""
    co_sold = split(10_000, 7000)
    usage = split(1_200, 7000)

    def line(kind: str, part: str, account: str, amount: int, **more: Any) -> dict[str, Any]:
        return {"id": f"e#{kind}{account}", "booked_at": "2026-11-22T12:00:00Z", "kind": kind,
                "part": part, "account": account, "amount": {"amount": amount, "currency": "USD"},
                **more}  # fmt: skip

    earned = co_sold["share"] + usage["share"]
    lines = [
        line("charge", "share", "pending", co_sold["share"], order_id="o1", charge_id="c1",
             split=co_sold),
        line("charge", "share", "pending", usage["share"], order_id="o1", charge_id="c2",
             split=usage),
        line("release", "release", "pending", -earned, order_id="o1"),
        line("release", "release", "available", earned, order_id="o1"),
        line("payout", "payout", "available", -earned, order_id="o1", payout_id="po1"),
        line("payout", "payout", "in_transit", earned, order_id="o1", payout_id="po1"),
        line("paid", "paid", "in_transit", -earned, order_id="o1", payout_id="po1"),
    ]  # fmt: skip
    day = earnings(ISV, lines)
    assert (day.charges, day.gross, day.fees) == (2, 11_200, co_sold["fee"] + usage["fee"])
    assert (day.shares, day.margins, day.refunds, day.other) == (earned, 0, 0, 0)
    assert day.payouts == -earned
    assert day.net == earned
