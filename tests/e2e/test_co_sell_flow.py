"""One co-sell deal from onboarding to reconciled payouts, driven over HTTP like its users.

Three partners sell one joint offering: an ISV's licence (subscription, 70 %
share), an integrator's setup (one-time, 90 % share) and the owning
managed-service provider's operations (usage, its own).  A customer orders
it, every partner accepts and delivers, usage is metered, and the money is
checked to the minor unit: each charge's split as settlement's statement
shows it, each partner's balance, the payouts, the bank reconciliation, the
trial balance and the three-way check.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest

from tests.e2e.marketplace import (
    INTEGRATOR_SHARE_BPS,
    ISV_SHARE_BPS,
    LICENSE_MONTHLY,
    OPERATIONS_PER_GB_HOUR,
    SETUP_FEE,
    Deal,
    Marketplace,
    Party,
    make_deal,
    place_when_known,
)
from tests.e2e.verify import verify_books
from tests.support.invariants import DEFAULT_FEE_BPS, FULL_BPS, Parts, UsageReport, split
from tests.support.stack import Stack

# Several processes started and waited for, on a machine CI and benchmarks share.
pytestmark = pytest.mark.timeout(240)
QUANTITY = 2
GB_HOURS = 100


async def order_status(mp: Marketplace, order_id: str, token: str) -> dict[str, Any]:
    body: dict[str, Any] = (
        await mp.answered("GET", "orders", f"/v1/orders/{order_id}", token=token)
    ).expect(200)
    return body


async def own_fulfillment(mp: Marketplace, partner: Party, order_id: str) -> dict[str, Any]:
    items = await mp.pages("orders", "/v1/fulfillments", token=partner.token)
    mine = [item for item in items if item["order_id"] == order_id]
    assert len(mine) == 1, f"{partner.id} sees {len(mine)} fulfilments of {order_id}: {items}"
    found: dict[str, Any] = mine[0]
    return found


async def act(mp: Marketplace, partner: Party, fulfillment_id: str, verb: str) -> dict[str, Any]:
    path = f"/v1/fulfillments/{fulfillment_id}/{verb}"
    body: dict[str, Any] = (await mp.answered("POST", "orders", path, token=partner.token)).expect(
        200
    )
    return body


def assert_split_is_exact(split: dict[str, Any], share_bps: int) -> None:
    """The parts sum to the gross and none is a unit or more away from its exact value."""
    gross = split["gross"]
    assert split["fee"] + split["share"] + split["margin"] == gross, split
    assert split["fee_bps"] == DEFAULT_FEE_BPS, split
    assert split["share_bps"] == share_bps, split
    net = Fraction(gross * (FULL_BPS - DEFAULT_FEE_BPS), FULL_BPS)
    exact = {
        "fee": Fraction(gross * DEFAULT_FEE_BPS, FULL_BPS),
        "share": net * Fraction(share_bps, FULL_BPS),
        "margin": net * Fraction(FULL_BPS - share_bps, FULL_BPS),
    }
    for part, value in exact.items():
        assert abs(split[part] - value) < 1, f"{part} of {split} is not {float(value)} rounded"
    assert split["rule"], split


async def charge_lines(mp: Marketplace, deal: Deal) -> dict[str, list[dict[str, Any]]]:
    """Each partner's statement lines that come from a charge."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for party in deal.partners.values():
        items = await mp.pages("settlement", f"/v1/statements/{party.id}", token=party.token)
        lines[party.id] = [item for item in items if item["kind"] == "charge"]
    return lines


async def test_a_co_sell_deal_is_fulfilled_settled_paid_and_reconciled(
    stack: Stack, mp: Marketplace
) -> None:
    deal = await make_deal(mp, customers=1)
    customer = deal.customers[0]

    placed = await place_when_known(
        mp, customer, [{"offering_id": deal.joint_offering_id, "quantity": QUANTITY}]
    )
    one_off = (LICENSE_MONTHLY + SETUP_FEE) * QUANTITY  # usage is charged as recorded
    assert placed["status"] == "pending"
    assert placed["customer_id"] == customer.id
    assert [line["amount"] for line in placed["lines"]] == [{"amount": one_off, "currency": "USD"}]
    assert placed["total"] == {"amount": one_off, "currency": "USD"}
    order_id = placed["id"]

    # Every partner is asked once and accepts; the last acceptance confirms the order.
    fulfillments = {
        key: await own_fulfillment(mp, party, order_id) for key, party in deal.partners.items()
    }
    assert {key: f["status"] for key, f in fulfillments.items()} == dict.fromkeys(
        deal.partners, "requested"
    )
    for key, party in deal.partners.items():
        assert (await act(mp, party, fulfillments[key]["id"], "accept"))["status"] == "accepted"
    assert (await order_status(mp, order_id, customer.token))["status"] == "confirmed"

    # The provider meters its operations; a repeated report is counted once.
    usage = {
        "usage_id": "ops-day-1", "order_id": order_id, "quantity": GB_HOURS,
        "occurred_at": datetime.now(UTC).isoformat(),
    }  # fmt: skip
    for _ in range(2):
        reply = await mp.answered("POST", "orders", "/v1/usage", token=deal.msp.token, json=usage)
        reply.expect(202)

    for key, party in deal.partners.items():
        assert (await act(mp, party, fulfillments[key]["id"], "complete"))["status"] == "completed"
    fulfilled = await order_status(mp, order_id, mp.stack.operator_token)
    assert fulfilled["status"] == "fulfilled"
    assert {f["status"] for f in fulfilled["fulfillments"]} == {"completed"}
    # The accountable owner sees the whole deal, as the operator does.
    assert (await order_status(mp, order_id, deal.msp.token))["id"] == order_id

    await stack.wait_settled()

    # Settlement's statements show every charge's split; each is exact and sums back.
    gross = {
        deal.isv.id: LICENSE_MONTHLY * QUANTITY,
        deal.integrator.id: SETUP_FEE * QUANTITY,
        deal.msp.id: OPERATIONS_PER_GB_HOUR * GB_HOURS,
    }
    shares = {
        deal.isv.id: ISV_SHARE_BPS,
        deal.integrator.id: INTEGRATOR_SHARE_BPS,
        deal.msp.id: FULL_BPS,
    }
    statements = await charge_lines(mp, deal)
    splits: dict[int, dict[str, Any]] = {}
    earned: dict[str, int] = defaultdict(int)
    for partner_id, lines in statements.items():
        for line in lines:
            split = line["split"]
            assert line["order_id"] == order_id, line
            assert line["part"] in ("share", "margin"), line
            # A line shows the part of the split it books, to this partner.
            assert line["amount"]["amount"] == split[line["part"]], line
            earned[partner_id] += line["amount"]["amount"]
            splits[split["gross"]] = split
    assert sorted(splits) == sorted(gross.values()), splits
    for partner_id, amount in gross.items():
        assert_split_is_exact(splits[amount], shares[partner_id])
    fees = sum(split["fee"] for split in splits.values())
    # The ISV and the integrator get shares; the owner gets its margins and its own usage.
    assert earned[deal.isv.id] == splits[gross[deal.isv.id]]["share"]
    assert earned[deal.integrator.id] == splits[gross[deal.integrator.id]]["share"]
    assert earned[deal.msp.id] == (
        splits[gross[deal.isv.id]]["margin"]
        + splits[gross[deal.integrator.id]]["margin"]
        + splits[gross[deal.msp.id]]["share"]
    )
    assert sum(earned.values()) + fees == sum(gross.values())

    # The balances are those earnings, available now the order is fulfilled, and they
    # equal an independent recomputation by largest remainder (the rule settlement names).
    order = await order_status(mp, order_id, mp.stack.operator_token)
    reports = [UsageReport("ops-day-1", order_id, deal.msp.id, GB_HOURS)]
    expected, books, problems = await verify_books(mp, deal, {order_id: order}, reports)
    assert not problems, problems
    for party in deal.partners.values():
        balance = books.balances[party.id]
        assert balance["pending"]["amount"] == 0
        assert balance["available"]["amount"] == earned[party.id]
    assert expected.fees == fees

    # One payout run pays each partner its available balance; a second pays nothing.
    as_of = {"as_of": datetime.now(UTC).isoformat()}
    run = (
        await mp.answered(
            "POST", "settlement", "/v1/payouts/run", token=mp.stack.operator_token, json=as_of
        )
    ).expect(201)
    paid = {p["partner_id"]: p for p in run["payouts"]}
    assert {pid: p["amount"]["amount"] for pid, p in paid.items()} == dict(earned)
    again = (
        await mp.answered(
            "POST", "settlement", "/v1/payouts/run", token=mp.stack.operator_token, json=as_of
        )
    ).expect(201)
    assert again["payouts"] == []

    # The bank booked all three, plus a line the marketplace never paid.
    bank_lines = [
        {
            "reference": p["reference"], "amount": p["amount"]["amount"],
            "booked_at": datetime.now(UTC).isoformat(),
        }
        for p in paid.values()
    ]  # fmt: skip
    stranger = {"reference": "UNKNOWN-1", "amount": 1, "booked_at": bank_lines[0]["booked_at"]}
    report = (
        await mp.answered(
            "POST", "settlement", "/v1/reconciliations", token=mp.stack.operator_token,
            json={"lines": [*bank_lines, stranger]}, idempotency_key="bank-statement-1",
        )
    ).expect(201)  # fmt: skip
    assert sorted(m["reference"] for m in report["matched"]) == sorted(
        p["reference"] for p in paid.values()
    )
    assert report["missing"] == []
    assert report["mismatched"] == []
    assert [u["reference"] for u in report["unexpected"]] == ["UNKNOWN-1"]

    expected, books, problems = await verify_books(mp, deal, {order_id: order}, reports)
    assert not problems, problems
    for party in deal.partners.values():
        balance = books.balances[party.id]
        assert (balance["available"]["amount"], balance["in_transit"]["amount"]) == (0, 0)
        assert balance["paid"]["amount"] == earned[party.id]
        assert [p["status"] for p in books.payouts[party.id]] == ["paid"]
    assert [check["order_id"] for check in books.checks] == [order_id]
    assert books.checks[0]["charged"]["amount"] == sum(gross.values())


def test_the_recomputation_splits_by_largest_remainder_worked_by_hand() -> None:
    # 24,690 at 3 %: fee 740.7, net 23,949.3, 70 % share 16,764.51, margin 7,184.79;
    # floors leave 2 units, for the largest fractions .79 (margin) and .7 (fee).
    assert split(24_690, fee_bps=300, share_bps=7_000) == Parts(741, 16_764, 7_185)
    # 99,998: fee 2,999.94, share 87,298.254, margin 9,699.806: fee and margin round up.
    assert split(99_998, fee_bps=300, share_bps=9_000) == Parts(3_000, 87_298, 9_700)
    # Exact splits need no rounding; ties go to the earlier part (fee, share, margin).
    assert split(3_700, fee_bps=300, share_bps=10_000) == Parts(111, 3_589, 0)
    assert split(1, fee_bps=5_000, share_bps=10_000) == Parts(1, 0, 0)
    assert split(0, fee_bps=300, share_bps=7_000) == Parts(0, 0, 0)
