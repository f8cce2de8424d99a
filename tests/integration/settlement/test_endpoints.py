"""The settlement endpoints: tenancy, payouts that never pay twice, refunds after payout, CSV."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.orders import Charge
from shared.http.pagination import encode_cursor
from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part


async def earn(
    settlement: Settlement, partner_id: str, amount: int, *, fulfil: bool = True
) -> tuple[OrderScript, Charge]:
    """An order that owes ``partner_id`` its own component's share of ``amount``, settled."""
    order = OrderScript(customer_id=new_id("cus"), owner_id=partner_id)
    charge = order.charge(Part(partner_id, "isv", 10_000), amount, 0)
    events = [order.placed(amount), order.confirmed([charge])]
    if fulfil:
        events.append(order.fulfilled())
    await settlement.settle(events)
    return order, charge


async def test_a_partner_sees_only_its_own_money(settlement: Settlement) -> None:
    mine, theirs = new_id("ptr"), new_id("ptr")
    await earn(settlement, mine, 10_000)
    await earn(settlement, theirs, 20_000)
    token = settlement.partner_token(mine)

    own = await settlement.call("GET", f"/v1/balances/{mine}", token=token)
    assert own.expect(200)["available"] == {"amount": 9_700, "currency": "USD"}
    for path in (f"/v1/balances/{theirs}", f"/v1/statements/{theirs}", "/v1/balances/nonsense"):
        assert (await settlement.call("GET", path, token=token)).status == 404
    other = await settlement.call("GET", "/v1/payouts", token=token, params={"partner_id": theirs})
    assert other.status == 404
    customer = settlement.issuer.issue(new_id("cus"), "customer", 0)
    assert (await settlement.call("GET", f"/v1/balances/{mine}", token=customer)).status == 403
    assert (await settlement.call("GET", f"/v1/balances/{mine}")).status == 401
    for path in ("/v1/ledger/trial-balance", "/v1/checks/three-way"):
        assert (await settlement.call("GET", path, token=token)).status == 403
    run = await settlement.call(
        "POST", "/v1/payouts/run", token=token, body={"as_of": datetime.now(UTC).isoformat()}
    )
    assert run.status == 403


async def test_concurrent_payout_runs_pay_each_partner_once(settlement: Settlement) -> None:
    partner = new_id("ptr")
    await earn(settlement, partner, 50_000)
    now = datetime.now(UTC)
    runs = await asyncio.gather(
        *[
            settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of.isoformat()})
            for as_of in (now, now, now + timedelta(seconds=1), now + timedelta(seconds=2))
        ]
    )
    paid = [p for run in runs for p in run.expect(201)["payouts"] if p["partner_id"] == partner]
    assert [p["amount"]["amount"] for p in paid] == [48_500]
    listed = await settlement.operator("GET", "/v1/payouts", params={"partner_id": partner})
    assert [p["status"] for p in listed.expect(200)["items"]] == ["pending"]
    assert (await settlement.balance(partner))["in_transit"] == 48_500


async def test_a_refund_after_payout_leaves_the_partner_owing_it_back(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    order, charge = await earn(settlement, partner, 10_000)
    as_of = datetime.now(UTC)
    await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of.isoformat()})
    assert await settlement.balance(partner) == {
        "pending": 0, "available": 0, "in_transit": 9_700, "paid": 0
    }  # fmt: skip

    # As Stripe does: the refund is taken from the partner's balance, which goes negative.
    await settlement.settle([order.refunded([(charge, 4_000)])])
    assert (await settlement.balance(partner))["available"] == -3_880  # 97 % of 4,000

    checks = await settlement.operator("GET", "/v1/checks/three-way", params={"limit": 500})
    check = next(c for c in checks.expect(200)["items"] if c["order_id"] == order.order_id)
    assert not check["agrees"]
    assert [d["check"] for d in check["disagreements"]] == ["paid_within_owed"]

    # The debt is netted against what the partner earns next; only a positive balance is paid.
    await earn(settlement, partner, 3_000)
    later = (as_of + timedelta(seconds=1)).isoformat()
    run = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": later})
    assert [p for p in run.expect(201)["payouts"] if p["partner_id"] == partner] == []
    assert (await settlement.balance(partner))["available"] == -3_880 + 2_910


async def test_a_bank_statement_may_come_as_csv(settlement: Settlement) -> None:
    partner = new_id("ptr")
    await earn(settlement, partner, 20_000)
    as_of = datetime.now(UTC).isoformat()
    run = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of})
    (payout,) = [p for p in run.expect(201)["payouts"] if p["partner_id"] == partner]
    csv = f"reference,amount,booked_at\n{payout['reference']},19400,{as_of}\n".encode()
    report = await settlement.operator(
        "POST", "/v1/reconciliations", raw=csv, content_type="text/csv"
    )
    assert [line["reference"] for line in report.expect(201)["matched"]] == [payout["reference"]]
    assert (await settlement.balance(partner))["paid"] == 19_400

    bad = await settlement.operator(
        "POST", "/v1/reconciliations", raw=b"ref,amount\nx,1\n", content_type="text/csv"
    )
    assert bad.status == 422
    wrong_amount = await settlement.operator(
        "POST",
        "/v1/reconciliations",
        raw=b"reference,amount,booked_at\nMP-X,ten,2026-01-01T00:00:00Z\n",
        content_type="text/csv",
    )
    assert wrong_amount.status == 422
    assert wrong_amount.body["errors"][0]["field"] == "lines[0].amount"


async def test_a_statement_in_another_media_type_is_told_both_it_may_use(
    settlement: Settlement,
) -> None:
    plain = await settlement.operator(
        "POST", "/v1/reconciliations", raw=b"reference,amount\n", content_type="text/plain"
    )
    assert plain.status == 415
    assert "application/json" in plain.body["detail"]
    assert "text/csv" in plain.body["detail"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/payouts/run", {}, "as_of"),
        ("/v1/payouts/run", {"as_of": "2026-01-01T00:00:00"}, "as_of"),
        ("/v1/reconciliations", {"lines": [{"reference": "", "amount": 1}]}, "lines[0].reference"),
    ],
)
async def test_bad_input_is_answered_with_the_field_named(
    settlement: Settlement, path: str, body: dict[str, object], field: str
) -> None:
    reply = await settlement.operator("POST", path, body=body)
    assert reply.status == 422
    assert reply.body["errors"][0]["field"] == field


async def test_the_trial_balance_sums_to_zero_per_currency(settlement: Settlement) -> None:
    await earn(settlement, new_id("ptr"), 12_345, fulfil=False)
    reply = (await settlement.operator("GET", "/v1/ledger/trial-balance")).expect(200)
    assert reply["totals"] == {"USD": 0}
    assert sum(a["balance"] for a in reply["accounts"]) == 0
    assert {"customer_receivables", "fee_revenue"} <= {a["account"] for a in reply["accounts"]}


# Valid RFC 3339, but outside the years 1..9999 once turned to UTC, where the database keeps them.
EARLIEST_PLUS_ONE_HOUR = "0001-01-01T00:00:00+01:00"
LATEST_MINUS_TEN_HOURS = "9999-12-31T23:59:59-10:00"


def cursor(position: list[object]) -> str:
    return encode_cursor(position)


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "field"),
    [
        ("POST", "/v1/payouts/run", {"as_of": EARLIEST_PLUS_ONE_HOUR}, None, "as_of"),
        ("POST", "/v1/payouts/run", {"as_of": LATEST_MINUS_TEN_HOURS}, None, "as_of"),
        (
            "POST",
            "/v1/reconciliations",
            {"lines": [{"reference": "MP-X", "amount": 1, "booked_at": LATEST_MINUS_TEN_HOURS}]},
            None,
            "lines[0].booked_at",
        ),
        ("GET", "/v1/checks/three-way", None, {"from": EARLIEST_PLUS_ONE_HOUR}, "query.from"),
        ("GET", "/v1/checks/three-way", None, {"to": LATEST_MINUS_TEN_HOURS}, "query.to"),
        ("GET", "/v1/statements/{partner}", None, {"from": EARLIEST_PLUS_ONE_HOUR}, "query.from"),
        ("GET", "/v1/statements/{partner}", None, {"to": LATEST_MINUS_TEN_HOURS}, "query.to"),
        (
            "GET",
            "/v1/statements/{partner}",
            None,
            {"cursor": cursor(["2026-01-01T00:00:00+00:00", "charge:x", 40_000])},
            "cursor",
        ),
        (
            "GET",
            "/v1/statements/{partner}",
            None,
            {"cursor": cursor([EARLIEST_PLUS_ONE_HOUR, "charge:x", 1])},
            "cursor",
        ),
        (
            "GET",
            "/v1/statements/{partner}",
            None,
            {"cursor": cursor(["2026-01-01T00:00:00", "charge:x", 1])},
            "cursor",
        ),
    ],
)
async def test_times_and_cursors_out_of_range_are_refused_not_failed_on(
    settlement: Settlement,
    method: str,
    path: str,
    body: dict[str, object] | None,
    params: dict[str, str] | None,
    field: str,
) -> None:
    path = path.format(partner=new_id("ptr"))
    if body is None:
        reply = await settlement.operator(method, path, params=params)
    else:
        reply = await settlement.operator(method, path, body=body)
    assert reply.status == 422, reply.body
    assert reply.body["errors"][0]["field"] == field


async def test_the_three_way_check_names_charges_that_miss_the_order_total(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    honest, _ = await earn(settlement, partner, 1_000)
    short = OrderScript(customer_id=new_id("cus"), owner_id=partner)
    charge = short.charge(Part(partner, "isv", 10_000), 900, 0)
    await settlement.settle([short.placed(1_000), short.confirmed([charge]), short.fulfilled()])

    checks = await settlement.operator("GET", "/v1/checks/three-way", params={"limit": 500})
    by_order = {c["order_id"]: c for c in checks.expect(200)["items"]}
    assert by_order[honest.order_id]["agrees"]
    assert by_order[short.order_id]["order_total"]["amount"] == 1_000
    assert not by_order[short.order_id]["agrees"]
    assert [d["check"] for d in by_order[short.order_id]["disagreements"]] == [
        "charges_match_order"
    ]


async def test_a_payout_booked_twice_is_paid_whichever_line_comes_first(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    await earn(settlement, partner, 1_000)
    as_of = datetime.now(UTC).isoformat()
    run = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of})
    (payout,) = [p for p in run.expect(201)["payouts"] if p["partner_id"] == partner]
    reference = payout["reference"]
    wrong = {"reference": reference, "amount": 971, "booked_at": as_of}
    right = {"reference": reference, "amount": 970, "booked_at": as_of}
    report = await settlement.operator(
        "POST", "/v1/reconciliations", body={"lines": [wrong, right]}
    )
    body = report.expect(201)
    assert [line["reference"] for line in body["matched"]] == [reference]
    assert body["mismatched"] == []
    assert [line["booked"]["amount"] for line in body["unexpected"]] == [971]
    assert (await settlement.balance(partner))["paid"] == 970
