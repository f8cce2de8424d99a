"""Balances, the three-way check and the trial balance, read from settlement's replies (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deploy.demo.statements import money_amount


@dataclass(frozen=True)
class Balance:
    currency: str
    pending: int
    available: int
    in_transit: int
    paid: int

    @property
    def total(self) -> int:
        return self.pending + self.available + self.in_transit + self.paid


def read_balance(body: object) -> Balance | None:
    if not isinstance(body, Mapping):
        return None
    parts = [
        money_amount(body.get(name)) for name in ("pending", "available", "in_transit", "paid")
    ]
    if any(part is None for part in parts):
        return None
    pending, available, in_transit, paid = (part or 0 for part in parts)
    currency = body.get("currency")
    return Balance(
        currency=currency if isinstance(currency, str) else "USD",
        pending=pending,
        available=available,
        in_transit=in_transit,
        paid=paid,
    )


@dataclass(frozen=True)
class ThreeWay:
    checked: int
    agreeing: int
    disagreements: tuple[str, ...]  # "order_id: what disagrees", for the first few


def read_three_way(bodies: list[object], *, orders: set[str] | None = None) -> ThreeWay:
    """Count the orders the check covers (only ``orders`` if given) and which disagree.

    ``bodies`` are the pages of the reply; each is ``{items|orders|checks: [...]}``
    whose entries carry ``agrees`` and name their disagreements.
    """
    checked = agreeing = 0
    disagreements: list[str] = []
    for body in bodies:
        for entry in _entries(body):
            order_id = str(entry.get("order_id", entry.get("id", "?")))
            if orders is not None and order_id not in orders:
                continue
            checked += 1
            if entry.get("agrees") is True:
                agreeing += 1
                continue
            named = entry.get("disagreements", entry.get("differences", []))
            what = "; ".join(map(_disagreement, named)) if isinstance(named, list) else ""
            disagreements.append(f"{order_id}: {what or 'disagrees'}")
    return ThreeWay(checked=checked, agreeing=agreeing, disagreements=tuple(disagreements))


def _disagreement(item: object) -> str:
    """``{check, detail}`` as "check: detail"; anything else as it prints."""
    if isinstance(item, Mapping) and "detail" in item:
        return f"{item.get('check', 'check')}: {item['detail']}"
    return str(item)


def _entries(body: object) -> list[Mapping[str, object]]:
    if isinstance(body, list):
        items: object = body
    elif isinstance(body, Mapping):
        items = next(
            (
                body[name]
                for name in ("items", "orders", "checks")
                if isinstance(body.get(name), list)
            ),
            [],
        )
    else:
        items = []
    return (
        [entry for entry in items if isinstance(entry, Mapping)] if isinstance(items, list) else []
    )


@dataclass(frozen=True)
class TrialBalance:
    accounts: tuple[tuple[str, str, int], ...]  # (account, currency, signed balance)

    def sums(self) -> dict[str, int]:
        """Per currency, the sum of every account's balance: zero when the books balance."""
        totals: dict[str, int] = {}
        for _, currency, balance in self.accounts:
            totals[currency] = totals.get(currency, 0) + balance
        return totals

    @property
    def balanced(self) -> bool:
        return bool(self.accounts) and all(total == 0 for total in self.sums().values())


def read_trial_balance(body: object) -> TrialBalance:
    accounts = body.get("accounts", []) if isinstance(body, Mapping) else []
    rows: list[tuple[str, str, int]] = []
    for raw in accounts if isinstance(accounts, list) else []:
        if not isinstance(raw, Mapping):
            continue
        balance = money_amount(raw.get("balance"))
        if balance is None:
            continue
        rows.append((str(raw.get("account", "?")), str(raw.get("currency", "USD")), balance))
    return TrialBalance(accounts=tuple(rows))
