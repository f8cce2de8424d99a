"""Bank statements against the real service: returned lines fail payouts, replays say so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.test_endpoints import earn

EARNED = 970  # 1,000 charged, less the 3 % marketplace fee


async def paid_out(settlement: Settlement, partner: str, as_of: datetime) -> dict[str, Any]:
    """Run payouts at ``as_of``; the one payout made to ``partner``."""
    run = await settlement.operator("POST", "/v1/payouts/run", body={"as_of": as_of.isoformat()})
    payouts: list[dict[str, Any]] = run.expect(201)["payouts"]
    (payout,) = [p for p in payouts if p["partner_id"] == partner]
    return payout


async def post_statement(
    settlement: Settlement, *lines: tuple[str, int, datetime] | tuple[str, int, datetime, str]
) -> Any:
    """Post JSON lines; a fourth item in a line is its ``kind``."""
    body = {
        "lines": [
            {"reference": line[0], "amount": line[1], "booked_at": line[2].isoformat()}
            | ({"kind": line[3]} if len(line) == 4 else {})
            for line in lines
        ]
    }
    return (await settlement.operator("POST", "/v1/reconciliations", body=body)).expect(201)


async def in_transit(settlement: Settlement) -> tuple[str, dict[str, Any], datetime]:
    """A new partner's payout of ``EARNED`` in transit, and a moment after it was made."""
    partner = new_id("ptr")
    await earn(settlement, partner, 1_000)
    payout = await paid_out(settlement, partner, datetime.now(UTC))
    return partner, payout, datetime.now(UTC) + timedelta(seconds=1)


def references(report: Any, name: str) -> list[str]:
    return [line["reference"] for line in report[name]]


async def listed(settlement: Settlement, partner: str) -> list[dict[str, Any]]:
    reply = await settlement.operator("GET", "/v1/payouts", params={"partner_id": partner})
    items: list[dict[str, Any]] = reply.expect(200)["items"]
    return items


async def outbox_types(settlement: Settlement, payout_id: str) -> list[str]:
    conn = await asyncpg.connect(settlement.database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_type FROM outbox WHERE topic LIKE '%settlement.payouts'"
            " AND convert_from(payload, 'UTF8') LIKE '%' || $1 || '%' ORDER BY id",
            payout_id,
        )
    finally:
        await conn.close()
    return [row["event_type"] for row in rows]


async def test_a_returned_payout_fails_and_its_money_is_paid_again(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    await earn(settlement, partner, 1_000)
    as_of = datetime.now(UTC)
    payout = await paid_out(settlement, partner, as_of)
    reference = payout["reference"]
    returned_at = datetime.now(UTC) + timedelta(seconds=1)

    report = await post_statement(settlement, (reference, EARNED, returned_at, "returned"))
    assert report["returned"] == [{
        "reference": reference,
        "expected": {"amount": EARNED, "currency": "USD"},
        "booked": {"amount": EARNED, "currency": "USD"},
        "booked_amount": EARNED,
        "payout_id": payout["id"],
        "status": "failed",
        "kind": "returned",
    }]  # fmt: skip
    assert references(report, "matched") == references(report, "mismatched") == []
    assert reference not in references(report, "missing")
    back = {"pending": 0, "available": EARNED, "in_transit": 0, "paid": 0}
    assert await settlement.balance(partner) == back
    [failed] = await listed(settlement, partner)
    assert (failed["status"], failed["failed_at"]) == (
        "failed",
        returned_at.isoformat().replace("+00:00", "Z"),
    )
    assert await outbox_types(settlement, payout["id"]) == [
        "settlement.payout.initiated",
        "settlement.payout.failed",
    ]

    # The same statement again, then the bank's booking of it: a failed payout
    # is never paid, and nothing moves.
    again = await post_statement(settlement, (reference, EARNED, returned_at, "returned"))
    late = await post_statement(settlement, (reference, EARNED, returned_at))
    for replay in (again, late):
        assert references(replay, "already_reconciled") == [reference]
        assert replay["already_reconciled"][0]["status"] == "failed"
        assert replay["matched"] == replay["returned"] == []
    assert await settlement.balance(partner) == back
    assert [p["status"] for p in await listed(settlement, partner)] == ["failed"]
    assert len(await outbox_types(settlement, payout["id"])) == 2

    # The next run pays the money again, under a new payout.
    repaid = await paid_out(settlement, partner, returned_at + timedelta(seconds=1))
    assert repaid["amount"] == {"amount": EARNED, "currency": "USD"}
    assert repaid["reference"] != reference
    assert await settlement.balance(partner) == {
        "pending": 0, "available": 0, "in_transit": EARNED, "paid": 0
    }  # fmt: skip


async def test_a_payout_the_bank_booked_then_returned_leaves_cash_again(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    order, _ = await earn(settlement, partner, 1_000)
    payout = await paid_out(settlement, partner, datetime.now(UTC))
    reference = payout["reference"]
    booked = datetime.now(UTC) + timedelta(seconds=1)

    first = await post_statement(settlement, (reference, EARNED, booked))
    assert references(first, "matched") == [reference]
    assert (await settlement.balance(partner))["paid"] == EARNED

    # Stripe's paid → failed: the transfer came back days later.
    second = await post_statement(
        settlement, (reference, EARNED, booked + timedelta(days=2), "returned")
    )
    assert references(second, "returned") == [reference]
    assert await settlement.balance(partner) == {
        "pending": 0, "available": EARNED, "in_transit": 0, "paid": 0
    }  # fmt: skip
    checks = await settlement.operator("GET", "/v1/checks/three-way", params={"limit": 500})
    check = next(c for c in checks.expect(200)["items"] if c["order_id"] == order.order_id)
    assert (check["paid_out"]["amount"], check["agrees"]) == (0, True)


async def test_a_payout_booked_and_returned_in_one_statement_fails_whatever_the_line_order(
    settlement: Settlement,
) -> None:
    partner, payout, booked = await in_transit(settlement)
    reference = payout["reference"]

    report = await post_statement(
        settlement, (reference, EARNED, booked, "returned"), (reference, EARNED, booked)
    )
    assert references(report, "returned") == references(report, "matched") == [reference]
    assert [line["status"] for line in report["matched"]] == ["failed"]
    assert await settlement.balance(partner) == {
        "pending": 0, "available": EARNED, "in_transit": 0, "paid": 0
    }  # fmt: skip
    assert await outbox_types(settlement, payout["id"]) == [
        "settlement.payout.initiated",
        "settlement.payout.paid",
        "settlement.payout.failed",
    ]


async def test_missing_lists_only_payouts_made_before_the_statements_last_booking(
    settlement: Settlement,
) -> None:
    partner = new_id("ptr")
    await earn(settlement, partner, 1_000)
    before_payout = datetime.now(UTC) - timedelta(seconds=1)
    payout = await paid_out(settlement, partner, datetime.now(UTC))
    stranger = f"NOBODY-{new_id('x')[-8:].upper()}"

    # A statement whose bookings all precede the payout could not show it.
    early = await post_statement(settlement, (stranger, 5, before_payout))
    assert payout["reference"] not in references(early, "missing")
    assert early["statement_end"] == before_payout.isoformat().replace("+00:00", "Z")

    later = await post_statement(settlement, (stranger, 5, datetime.now(UTC) + timedelta(days=1)))
    mine = [line for line in later["missing"] if line["reference"] == payout["reference"]]
    assert mine == [{
        "reference": payout["reference"],
        "expected": {"amount": EARNED, "currency": "USD"},
        "payout_id": payout["id"],
        "status": "pending",
    }]  # fmt: skip
    # A line naming no payout has no currency to show: its amount stands bare.
    assert later["unexpected"] == [{"reference": stranger, "booked_amount": 5}]

    # An empty statement expects nothing.
    empty = await post_statement(settlement)
    assert (empty["missing"], empty["statement_end"]) == ([], None)


async def test_outgoing_transfers_shown_as_negatives_fail_no_payout(
    settlement: Settlement,
) -> None:
    # Many bank exports show money leaving as a negative number: that is not a
    # return, and reading it as one would make the money available to pay again.
    partner, payout, booked = await in_transit(settlement)
    reference = payout["reference"]
    unmoved = {"pending": 0, "available": 0, "in_transit": EARNED, "paid": 0}

    for report in (
        await post_statement(settlement, (reference, -EARNED, booked)),
        await post_statement(settlement, (reference, -EARNED, booked, "returned")),
    ):
        assert references(report, "mismatched") == [reference]
        assert report["mismatched"][0]["status"] == "pending"
        assert report["returned"] == report["matched"] == []
    assert await settlement.balance(partner) == unmoved
    assert [p["status"] for p in await listed(settlement, partner)] == ["pending"]
    assert await outbox_types(settlement, payout["id"]) == ["settlement.payout.initiated"]
    run = await settlement.operator(
        "POST", "/v1/payouts/run", body={"as_of": (booked + timedelta(seconds=1)).isoformat()}
    )
    assert [p for p in run.expect(201)["payouts"] if p["partner_id"] == partner] == []


async def test_a_csv_statement_says_returns_in_its_kind_column(settlement: Settlement) -> None:
    partner, payout, booked = await in_transit(settlement)
    at = booked.isoformat()
    csv = f"reference,amount,booked_at,kind\n{payout['reference']},{EARNED},{at},returned\n"
    reply = await settlement.operator(
        "POST", "/v1/reconciliations", raw=csv.encode(), content_type="text/csv"
    )
    assert references(reply.expect(201), "returned") == [payout["reference"]]
    assert (await settlement.balance(partner))["available"] == EARNED

    # A blank kind is a booking.
    blank = f"reference,amount,booked_at,kind\nNOBODY-1,5,{at},\n"
    reply = await settlement.operator(
        "POST", "/v1/reconciliations", raw=blank.encode(), content_type="text/csv"
    )
    assert reply.expect(201)["unexpected"] == [{"reference": "NOBODY-1", "booked_amount": 5}]


async def test_an_unknown_line_kind_is_refused_naming_the_line(settlement: Settlement) -> None:
    at = datetime.now(UTC).isoformat()
    line = {"reference": "MP-X", "amount": 5, "booked_at": at}
    ok = {**line, "kind": "booked"}
    as_json = await settlement.operator(
        "POST", "/v1/reconciliations", body={"lines": [ok, {**line, "kind": "reversed"}]}
    )
    as_csv = await settlement.operator(
        "POST",
        "/v1/reconciliations",
        raw=f"reference,amount,booked_at,kind\nMP-X,5,{at},reversed\n".encode(),
        content_type="text/csv",
    )
    for reply, field in ((as_json, "lines[1].kind"), (as_csv, "lines[0].kind")):
        assert reply.status == 422
        assert [error["field"] for error in reply.body["errors"]] == [field]
