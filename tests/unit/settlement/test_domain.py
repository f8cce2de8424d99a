"""The ledger's pure rules: every entry balances; release, payouts and refunds move exactly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.settlement.domain import (
    ChargedComponent,
    LedgerRefused,
    OrderBook,
    balances,
    book_charge,
    book_refund,
    is_balanced,
    paid_entry,
    payout_entry,
    plan_payouts,
    release,
)

AT = datetime(2026, 11, 1, tzinfo=UTC)


def book() -> OrderBook:
    return OrderBook("ord_1", "cus_1", "USD", "confirmed", AT, 0)


def component(charge_id: str, partner: str, share_bps: int, amount: int) -> ChargedComponent:
    return ChargedComponent(
        charge_id=charge_id, kind="order", order_id="ord_1", line_id="lin_1",
        offering_id="off_1", component_index=0, owner_id="owner", partner_id=partner,
        role="isv", agreement_id=None, share_bps=share_bps, amount=amount, currency="USD",
    )  # fmt: skip


@given(
    amounts=st.lists(st.integers(1, 10**9), min_size=1, max_size=5),
    share_bps=st.integers(0, 10_000),
    fee_bps=st.integers(0, 10_000),
    refunded=st.floats(0, 1),
)
def test_every_entry_balances_and_a_fulfilled_order_owes_only_available_money(
    amounts: list[int], share_bps: int, fee_bps: int, refunded: float
) -> None:
    order = book()
    entries = []
    for index, amount in enumerate(amounts):
        entries.append(
            book_charge(order, component(f"c{index}", "isv", share_bps, amount),
                        fee_bps=fee_bps, booked_at=AT, event_id=None)[1]
        )  # fmt: skip
    refund = int(amounts[0] * refunded)
    entries.append(
        book_refund(order, refund_id="r", charge_id="c0", amount=refund, currency="USD",
                    booked_at=AT, event_id=None)[1]
    )  # fmt: skip
    entries.append(release(order, booked_at=AT, event_id=None))
    booked = [entry for entry in entries if entry is not None]
    assert all(is_balanced(entry) for entry in booked)
    totals = balances(posting for entry in booked for posting in entry.postings)
    assert totals.get(("partner_pending", "isv"), 0) == 0
    assert totals.get(("partner_pending", "owner"), 0) == 0
    assert totals[("customer_receivables", None)] == sum(amounts) - refund


def test_release_happens_once() -> None:
    order = book()
    book_charge(order, component("c", "isv", 7_000, 10_000), fee_bps=300, booked_at=AT,
                event_id=None)  # fmt: skip
    assert release(order, booked_at=AT, event_id=None) is not None
    assert release(order, booked_at=AT, event_id=None) is None


def test_a_refund_of_an_unknown_charge_or_beyond_the_charge_is_refused() -> None:
    order = book()
    book_charge(order, component("c", "isv", 7_000, 10_000), fee_bps=300, booked_at=AT,
                event_id=None)  # fmt: skip
    with pytest.raises(LedgerRefused, match="unknown"):
        book_refund(order, refund_id="r1", charge_id="nope", amount=1, currency="USD",
                    booked_at=AT, event_id=None)  # fmt: skip
    with pytest.raises(LedgerRefused, match="exceeds"):
        book_refund(order, refund_id="r2", charge_id="c", amount=10_001, currency="USD",
                    booked_at=AT, event_id=None)  # fmt: skip


def test_payouts_net_a_refunded_order_and_skip_a_partner_who_owes() -> None:
    plans = plan_payouts(
        [
            ("isv", "USD", "ord_a", 5_000),
            ("isv", "USD", "ord_b", -1_200),  # refunded after an earlier payout
            ("msp", "USD", "ord_c", -300),
            ("msp", "EUR", "ord_d", 700),
            ("int", "USD", "ord_e", 0),
        ]
    )
    assert [(p.partner_id, p.currency, p.amount) for p in plans] == [
        ("isv", "USD", 3_800),
        ("msp", "EUR", 700),
    ]
    entry = payout_entry("pay_1", plans[0], AT)
    assert is_balanced(entry)
    assert is_balanced(paid_entry("pay_1", plans[0], AT))
    totals = balances(entry.postings)
    assert totals[("partner_available", "isv")] == 3_800
    assert totals[("payouts_in_transit", "isv")] == -3_800
