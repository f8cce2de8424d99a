"""What the ledger must hold, recomputed from the orders alone, independently of settlement.

The contract's money rule: each charged component amount ``G`` is split into
the marketplace fee (``fee_bps`` of ``G``), the component partner's share of
the rest (``share_bps``) and the owner's margin (the remainder), in integer
minor units summing to ``G``, by largest remainder.  This module computes that
from exact fractions, on its own, so a bug in settlement's arithmetic cannot
hide behind the same bug here.

Inputs are what the public API shows: orders as the operator reads them
(``GET /v1/orders/{id}``), each ordered offering version's components with
their shares (``GET /v1/offerings/{id}/versions/{v}`` as the operator), and the
usage reports a partner got 202 for.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

FULL_BPS = 10_000
DEFAULT_FEE_BPS = 300


@dataclass(frozen=True)
class Parts:
    fee: int
    share: int
    margin: int


def split(gross: int, *, fee_bps: int, share_bps: int) -> Parts:
    """Hamilton's method over exact fractions; ties go to the earlier of fee, share, margin."""
    net = Fraction(gross * (FULL_BPS - fee_bps), FULL_BPS)
    exact = [
        Fraction(gross * fee_bps, FULL_BPS),
        net * Fraction(share_bps, FULL_BPS),
        net * Fraction(FULL_BPS - share_bps, FULL_BPS),
    ]
    assert sum(exact) == gross
    whole = [math.floor(value) for value in exact]
    leftover = gross - sum(whole)
    by_remainder = sorted(range(3), key=lambda i: (whole[i] - exact[i], i))
    for i in by_remainder[:leftover]:
        whole[i] += 1
    return Parts(*whole)


@dataclass(frozen=True)
class UsageReport:
    """Usage a partner reported and orders answered 202 for (counted once per usage id)."""

    usage_id: str
    order_id: str
    partner_id: str
    quantity: int


@dataclass(frozen=True)
class Charge:
    order_id: str
    owner_id: str
    partner_id: str
    share_bps: int
    gross: int


@dataclass
class Expected:
    """What settlement must show once it has applied every order event."""

    fee_bps: int
    pending: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    released: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fees: int = 0
    # Per order: what the customer owes net of refunds.
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def book(self, charge: Charge, *, released: bool) -> None:
        parts = split(charge.gross, fee_bps=self.fee_bps, share_bps=charge.share_bps)
        assert parts.fee + parts.share + parts.margin == charge.gross
        owed = self.released if released else self.pending
        owed[charge.partner_id] += parts.share
        owed[charge.owner_id] += parts.margin
        self.fees += parts.fee
        self.charged[charge.order_id] += charge.gross

    def owed(self, partner_id: str) -> int:
        return self.pending.get(partner_id, 0) + self.released.get(partner_id, 0)


OfferingVersions = Mapping[tuple[str, int], Mapping[str, Any]]


def charges_of(
    order: Mapping[str, Any], versions: OfferingVersions, usage: Sequence[UsageReport]
) -> list[Charge]:
    """Every charge an order makes: each priced component at confirmation, each usage report."""
    charges: list[Charge] = []
    for line in order["lines"]:
        offering = versions[(line["offering_id"], line["offering_version"])]
        for component in offering["components"]:
            pricing = component["pricing"]
            if pricing["model"] == "usage":
                continue
            gross = pricing["unit_amount"] * line["quantity"]
            if gross:
                charges.append(_charge(order, offering, component, gross))
    for report in usage:
        offering, component = _usage_component(order, versions, report.partner_id)
        gross = component["pricing"]["unit_amount"] * report.quantity
        charges.append(_charge(order, offering, component, gross))
    return charges


def _charge(
    order: Mapping[str, Any], offering: Mapping[str, Any], component: Mapping[str, Any], gross: int
) -> Charge:
    return Charge(
        order_id=order["id"],
        owner_id=offering["owner_id"],
        partner_id=component["partner_id"],
        share_bps=component["share_bps"],
        gross=gross,
    )


def _usage_component(
    order: Mapping[str, Any], versions: OfferingVersions, partner_id: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The first line's usage-priced component of ``partner_id`` (where orders charges it)."""
    for line in order["lines"]:
        offering = versions[(line["offering_id"], line["offering_version"])]
        for component in offering["components"]:
            if component["partner_id"] == partner_id and component["pricing"]["model"] == "usage":
                return offering, component
    raise AssertionError(f"order {order['id']} has no usage component of {partner_id}")


def expected_money(
    orders: Iterable[Mapping[str, Any]],
    versions: OfferingVersions,
    usage: Iterable[UsageReport],
    fee_bps: int = DEFAULT_FEE_BPS,
) -> Expected:
    """The ledger's balances by the contract's rules.

    A cancelled order nets to nothing (a cancel before confirmation charges
    nothing; after it, refunds reverse each charge exactly).  A confirmed
    order's money is pending; a fulfilled order's is released (available,
    in transit or paid), usage recorded after fulfilment included.
    """
    by_order: dict[str, list[UsageReport]] = defaultdict(list)
    for report in usage:
        by_order[report.order_id].append(report)
    expected = Expected(fee_bps)
    for order in orders:
        if order["status"] not in ("confirmed", "fulfilled"):
            continue
        for charge in charges_of(order, versions, by_order.get(order["id"], [])):
            expected.book(charge, released=order["status"] == "fulfilled")
    return expected


def balance_mismatches(
    expected: Expected, balances: Mapping[str, Mapping[str, Any]], payouts: Mapping[str, int]
) -> list[str]:
    """Each way a partner's balances differ from the recomputation (empty: all exact).

    ``balances`` are ``GET /v1/balances/{id}`` bodies; ``payouts`` the sum of
    each partner's payouts as ``GET /v1/payouts`` lists them.
    """
    problems: list[str] = []
    for partner_id, balance in sorted(balances.items()):
        pending = balance["pending"]["amount"]
        available = balance["available"]["amount"]
        in_transit = balance["in_transit"]["amount"]
        paid = balance["paid"]["amount"]
        want_pending = expected.pending.get(partner_id, 0)
        want_released = expected.released.get(partner_id, 0)
        if pending != want_pending:
            problems.append(f"{partner_id}: pending {pending}, recomputed {want_pending}")
        if available + in_transit + paid != want_released:
            problems.append(
                f"{partner_id}: available {available} + in transit {in_transit} + paid {paid}"
                f" = {available + in_transit + paid}, recomputed released {want_released}"
            )
        if available < 0:
            problems.append(f"{partner_id}: available {available} is negative (paid twice?)")
        paid_out = payouts.get(partner_id, 0)
        if in_transit + paid != paid_out:
            problems.append(
                f"{partner_id}: in transit {in_transit} + paid {paid} != payouts listed {paid_out}"
            )
    return problems
