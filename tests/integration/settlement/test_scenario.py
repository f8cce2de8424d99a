"""A three-partner co-sell deal, followed to the bank and checked to the minor unit by hand.

The offering is owned by a managed-service provider (MSP).  It bundles an
ISV's one-time licence (the ISV's agreement share: 70 %), an integrator's
monthly subscription (share: 90 %) and the MSP's own usage-priced service.
The marketplace fee is 3 % (300 bps).  Every number below is worked out in
the comments from the contract's rule and ``largest-remainder-v1``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part


def by_partner(payouts: list[dict[str, Any]], *partners: str) -> dict[str, dict[str, Any]]:
    """The payouts of this test's partners (a run pays every partner of the module's service)."""
    return {p["partner_id"]: p for p in payouts if p["partner_id"] in partners}


async def test_three_partners_are_settled_paid_and_reconciled_to_the_minor_unit(
    settlement: Settlement,
) -> None:
    msp, isv, integrator = new_id("ptr"), new_id("ptr"), new_id("ptr")
    isv_part = Part(isv, "isv", 7_000, new_id("agr"))
    integrator_part = Part(integrator, "integrator", 9_000, new_id("agr"))
    msp_part = Part(msp, "managed_service", 10_000)

    # Order A: two of the bundle.  ISV licence 999.99 x 2, integrator 249.99/month x 2.
    a = OrderScript(customer_id=new_id("cus"), owner_id=msp)
    a_isv = a.charge(isv_part, 199_998, 0)
    a_integrator = a.charge(integrator_part, 49_998, 1)
    await settlement.settle(
        [
            a.placed(249_996),
            a.confirmed([a_isv, a_integrator]),
            # 1,234 GB-hours at 0.37: 45,658.
            a.usage(msp_part, 2, unit_amount=37, quantity=1_234),
        ]
    )
    # ISV charge 199,998: fee 3 % = 5,999.94; ISV 70 % of the 97 % = 135,798.642;
    #   MSP margin 29.1 % = 58,199.418.  Floors 5,999 + 135,798 + 58,199 = 199,996; the
    #   2 units left go to the largest remainders (.94 fee, .642 share): 6,000 / 135,799 / 58,199.
    # Integrator charge 49,998: 1,499.94 / 43,648.254 (87.3 %) / 4,849.806 (9.7 %); 2 units
    #   left go to fee (.94) and margin (.806): 1,500 / 43,648 / 4,850.
    # Usage 45,658, the MSP's own part: fee 1,369.74 -> 1,370; MSP 44,288.26 -> 44,288.
    msp_on_a = 58_199 + 4_850 + 44_288  # 107,337
    assert await settlement.balance(isv) == {
        "pending": 135_799, "available": 0, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await settlement.balance(integrator) == {
        "pending": 43_648, "available": 0, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await settlement.balance(msp) == {
        "pending": msp_on_a, "available": 0, "in_transit": 0, "paid": 0
    }  # fmt: skip

    await settlement.settle([a.fulfilled()])
    assert await settlement.balance(isv) == {
        "pending": 0, "available": 135_799, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await settlement.balance(msp) == {
        "pending": 0, "available": msp_on_a, "in_transit": 0, "paid": 0
    }  # fmt: skip

    # Order B: one bundle, then a goodwill refund before fulfilment: 500.00 of the ISV
    # licence and the whole integrator subscription.
    b = OrderScript(customer_id=new_id("cus"), owner_id=msp)
    b_isv = b.charge(isv_part, 99_999, 0)
    b_integrator = b.charge(integrator_part, 24_999, 1)
    await settlement.settle(
        [
            b.placed(124_998),
            b.confirmed([b_isv, b_integrator]),
            b.refunded([(b_isv, 50_000), (b_integrator, 24_999)]),
        ]
    )
    # B's ISV charge 99,999: 2,999.97 / 67,899.321 / 29,099.709 -> 3,000 / 67,899 / 29,100.
    # B's integrator 24,999: 749.97 / 21,824.127 / 2,424.903 -> 750 / 21,824 / 2,425.
    # Refund 50,000 of the ISV charge, in proportion to 3,000 / 67,899 / 29,100 of 99,999:
    #   1,500.015 / 33,949.839 / 14,550.146 -> one unit left, to the share: 1,500 / 33,950 /
    #   14,550.  The integrator refund is the whole charge: 750 / 21,824 / 2,425 back.
    assert await settlement.balance(isv) == {
        "pending": 67_899 - 33_950, "available": 135_799, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await settlement.balance(integrator) == {
        "pending": 0, "available": 43_648, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await settlement.balance(msp) == {
        "pending": 29_100 - 14_550, "available": msp_on_a, "in_transit": 0, "paid": 0
    }  # fmt: skip

    await settlement.settle([b.fulfilled()])
    isv_total = 135_799 + 33_949  # 169,748
    msp_total = msp_on_a + 14_550  # 121,887
    assert await settlement.balance(isv) == {
        "pending": 0, "available": isv_total, "in_transit": 0, "paid": 0
    }  # fmt: skip

    as_of = datetime.now(UTC).isoformat()
    run = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of})
    paid = by_partner(run.expect(201)["payouts"], isv, integrator, msp)
    assert {partner: p["amount"] for partner, p in paid.items()} == {
        isv: {"amount": isv_total, "currency": "USD"},
        integrator: {"amount": 43_648, "currency": "USD"},
        msp: {"amount": msp_total, "currency": "USD"},
    }
    assert len({p["reference"] for p in paid.values()}) == 3
    again = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of})
    assert by_partner(again.expect(201)["payouts"], isv, integrator, msp) == {}
    assert await settlement.balance(integrator) == {
        "pending": 0, "available": 0, "in_transit": 43_648, "paid": 0
    }  # fmt: skip

    unexpected = f"MP-NOBODY-{new_id('x')[-8:].upper()}"
    # The next day's statement: the payouts were sent before its bookings.
    booked = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    statement = {
        "lines": [
            {"reference": paid[isv]["reference"], "amount": isv_total, "booked_at": booked},
            {"reference": paid[msp]["reference"], "amount": msp_total - 1, "booked_at": booked},
            {"reference": unexpected, "amount": 1_234, "booked_at": booked},
        ]
    }
    report = (await settlement.operator("POST", "/v1/reconciliations", body=statement)).expect(201)
    ours = {p["reference"] for p in paid.values()}
    assert [line["reference"] for line in report["matched"]] == [paid[isv]["reference"]]
    assert [
        line for line in report["missing"] if line["reference"] in ours
    ] == [{
        "reference": paid[integrator]["reference"],
        "expected": {"amount": 43_648, "currency": "USD"},
        "payout_id": paid[integrator]["id"],
        "status": "pending",
    }]  # fmt: skip
    assert report["mismatched"] == [{
        "reference": paid[msp]["reference"],
        "expected": {"amount": msp_total, "currency": "USD"},
        "booked": {"amount": msp_total - 1, "currency": "USD"},
        "booked_amount": msp_total - 1,
        "payout_id": paid[msp]["id"],
        "status": "pending",
    }]  # fmt: skip
    # No payout has that reference, so no currency is known: the amount is shown bare.
    assert report["unexpected"] == [{"reference": unexpected, "booked_amount": 1_234}]
    assert (report["returned"], report["already_reconciled"]) == ([], [])

    final = {
        isv: {"pending": 0, "available": 0, "in_transit": 0, "paid": isv_total},
        integrator: {"pending": 0, "available": 0, "in_transit": 43_648, "paid": 0},
        msp: {"pending": 0, "available": 0, "in_transit": msp_total, "paid": 0},
    }
    assert {p: await settlement.balance(p) for p in final} == final

    # The same statement again moves nothing; both reports are kept.
    second = (await settlement.operator("POST", "/v1/reconciliations", body=statement)).expect(201)
    assert {p: await settlement.balance(p) for p in final} == final
    # The isv's payout was paid by the first: the second says so, and matches nothing anew.
    assert second["matched"] == []
    assert second["already_reconciled"] == [
        {**line, "status": "paid"} for line in report["matched"]
    ]
    assert (second["mismatched"], second["unexpected"]) == (
        report["mismatched"],
        report["unexpected"],
    )
    kept = await settlement.operator("GET", f"/v1/reconciliations/{report['id']}")
    assert kept.expect(200) == report

    listed = await settlement.call("GET", "/v1/payouts", token=settlement.partner_token(isv))
    assert [(p["status"], p["amount"]["amount"]) for p in listed.expect(200)["items"]] == [
        ("paid", isv_total)
    ]

    checks = await settlement.operator("GET", "/v1/checks/three-way", params={"limit": 500})
    by_order = {c["order_id"]: c for c in checks.expect(200)["items"]}
    # A: 295,654 charged; fees 6,000 + 1,500 + 1,370; partners 286,784, all paid out.
    assert {k: by_order[a.order_id][k]["amount"] for k in (
        "charged", "ledger", "fees", "owed_to_partners", "paid_out"
    )} == {
        "charged": 295_654, "ledger": 295_654, "fees": 8_870,
        "owed_to_partners": 286_784, "paid_out": 286_784,
    }  # fmt: skip
    # B: 124,998 - 74,999 = 49,999; fees 3,000 - 1,500 + 750 - 750; partners 48,499.
    assert {k: by_order[b.order_id][k]["amount"] for k in (
        "charged", "ledger", "fees", "owed_to_partners", "paid_out"
    )} == {
        "charged": 49_999, "ledger": 49_999, "fees": 1_500,
        "owed_to_partners": 48_499, "paid_out": 48_499,
    }  # fmt: skip
    assert by_order[a.order_id]["agrees"]
    assert by_order[b.order_id]["agrees"]

    lines = (
        await settlement.call("GET", f"/v1/statements/{isv}", token=settlement.partner_token(isv))
    ).expect(200)["items"]
    charge_line = next(line for line in lines if line.get("charge_id") == a_isv.charge_id)
    assert charge_line["split"] == {
        "gross": 199_998, "fee_bps": 300, "fee": 6_000, "share_bps": 7_000,
        "share": 135_799, "margin": 58_199, "rule": "largest-remainder-v1",
    }  # fmt: skip
    assert charge_line["amount"] == {"amount": 135_799, "currency": "USD"}
    # Summed, the lines are what is still owed: nothing, since all of it reached the bank.
    assert sum(line["amount"]["amount"] for line in lines) == 0
    assert [line["amount"]["amount"] for line in lines if line["kind"] == "paid"] == [
        -135_799,
        -33_949,
    ]
