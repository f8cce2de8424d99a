"""The marketplace's books checked against the orders, through the public API only."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.e2e.marketplace import Deal, Marketplace
from tests.support.invariants import (
    DEFAULT_FEE_BPS,
    Expected,
    UsageReport,
    balance_mismatches,
    expected_money,
)


@dataclass(frozen=True)
class Books:
    """What settlement shows, read in one go."""

    balances: dict[str, dict[str, Any]]
    payouts: dict[str, list[dict[str, Any]]]
    trial_balance: dict[str, Any]
    checks: list[dict[str, Any]]


async def read_books(mp: Marketplace, partner_ids: Iterable[str]) -> Books:
    operator = mp.stack.operator_token
    balances: dict[str, dict[str, Any]] = {}
    payouts: dict[str, list[dict[str, Any]]] = {}
    for partner_id in partner_ids:
        reply = await mp.answered("GET", "settlement", f"/v1/balances/{partner_id}", token=operator)
        balances[partner_id] = reply.expect(200)
        payouts[partner_id] = await mp.pages(
            "settlement", "/v1/payouts", token=operator, partner_id=partner_id
        )
    trial = (
        await mp.answered("GET", "settlement", "/v1/ledger/trial-balance", token=operator)
    ).expect(200)
    checks = await mp.pages("settlement", "/v1/checks/three-way", token=operator)
    return Books(balances, payouts, trial, checks)


async def offering_versions(
    mp: Marketplace, orders: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Each ordered offering version with its components' shares, as the operator sees it."""
    versions: dict[tuple[str, int], dict[str, Any]] = {}
    for order in orders:
        for line in order["lines"]:
            key = (line["offering_id"], line["offering_version"])
            if key not in versions:
                path = f"/v1/offerings/{key[0]}/versions/{key[1]}"
                reply = await mp.answered("GET", "catalog", path, token=mp.stack.operator_token)
                versions[key] = reply.expect(200)
    return versions


def books_mismatches(expected: Expected, books: Books) -> list[str]:
    """Every way the books differ from the recomputation or from themselves."""
    paid_out = {
        partner_id: sum(p["amount"]["amount"] for p in listed if p["status"] != "failed")
        for partner_id, listed in books.payouts.items()
    }
    problems = balance_mismatches(expected, books.balances, paid_out)
    for partner_id, listed in books.payouts.items():
        references = [p["reference"] for p in listed]
        if len(set(references)) != len(references):
            problems.append(f"{partner_id}: a payout reference twice: {references}")
    totals: dict[str, int] = books.trial_balance.get("totals") or _totals(
        books.trial_balance["accounts"]
    )
    if any(total != 0 for total in totals.values()):
        problems.append(f"trial balance does not sum to zero: {totals}")
    fees = sum(a["balance"] for a in books.trial_balance["accounts"] if "fee" in a["account"])
    if fees != -expected.fees:
        problems.append(f"fee revenue {fees}, recomputed {-expected.fees} (a credit)")
    by_order = {check["order_id"]: check for check in books.checks}
    problems += [f"three-way check disagrees: {c}" for c in books.checks if not c["agrees"]]
    for order_id, charged in expected.charged.items():
        if order_id not in by_order:
            problems.append(f"{order_id}: charged {charged}, missing from the three-way check")
    for order_id, found in by_order.items():
        # Net of refunds: a cancelled order charged nothing in the end.
        charged = expected.charged.get(order_id, 0)
        if found["charged"]["amount"] != charged:
            problems.append(f"{order_id}: three-way says charged {found['charged']}, not {charged}")
    return problems


def _totals(accounts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for account in accounts:
        totals[account["currency"]] += account["balance"]
    return dict(totals)


async def verify_books(
    mp: Marketplace,
    deal: Deal,
    orders: Mapping[str, Mapping[str, Any]],
    usage: Iterable[UsageReport],
    fee_bps: int = DEFAULT_FEE_BPS,
) -> tuple[Expected, Books, list[str]]:
    """Recompute the money from ``orders`` (operator's view) and compare every book."""
    versions = await offering_versions(mp, orders.values())
    expected = expected_money(orders.values(), versions, usage, fee_bps)
    books = await read_books(mp, [party.id for party in deal.partners.values()])
    problems = books_mismatches(expected, books)
    for check in books.checks:
        order = orders.get(check["order_id"])
        if order is None:
            problems.append(f"the three-way check names an order nobody placed: {check}")
        elif "order_total" in check and check["order_total"] != order["total"]:
            problems.append(f"{check['order_id']}: three-way total {check}, orders {order}")
    return expected, books, problems
