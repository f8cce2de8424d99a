"""Balances, the three-way check and the trial balance, read from settlement's replies."""

from __future__ import annotations

from deploy.demo.checks import Balance, read_balance, read_three_way, read_trial_balance


def usd(amount: int) -> dict[str, object]:
    return {"amount": amount, "currency": "USD"}


def test_a_balance_is_its_four_buckets() -> None:
    body = {
        "partner_id": "p",
        "currency": "USD",
        "pending": usd(1),
        "available": usd(2),
        "in_transit": usd(3),
        "paid": usd(4),
    }
    assert read_balance(body) == Balance("USD", 1, 2, 3, 4)
    assert Balance("USD", 1, 2, 3, 4).total == 10
    assert read_balance({"pending": usd(1)}) is None
    assert read_balance([]) is None


def test_the_trial_balance_is_zero_per_currency_only_when_every_currency_sums_to_zero() -> None:
    balanced = read_trial_balance(
        {
            "accounts": [
                {"account": "receivable", "currency": "USD", "balance": 1000},
                {"account": "fees", "currency": "USD", "balance": -30},
                {"account": "partner:p", "currency": "USD", "balance": -970},
                {"account": "receivable", "currency": "EUR", "balance": 0},
            ]
        }
    )
    assert balanced.sums() == {"USD": 0, "EUR": 0}
    assert balanced.balanced
    off = read_trial_balance({"accounts": [{"account": "a", "currency": "USD", "balance": 1}]})
    assert not off.balanced
    assert not read_trial_balance({"accounts": []}).balanced


def test_the_three_way_check_counts_only_the_days_orders_and_names_disagreements() -> None:
    pages: list[object] = [
        {
            "items": [
                {"order_id": "o1", "agrees": True},
                {"order_id": "o2", "agrees": False, "disagreements": ["ledger 100 ≠ charged 90"]},
                {"order_id": "elsewhere", "agrees": False},
            ],
            "next_cursor": "c",
        },
        {"orders": [{"order_id": "o3", "agrees": True}]},
    ]
    check = read_three_way(pages, orders={"o1", "o2", "o3"})
    assert (check.checked, check.agreeing) == (3, 2)
    assert check.disagreements == ("o2: ledger 100 ≠ charged 90",)
    assert read_three_way(pages).checked == 4
