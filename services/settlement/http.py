"""Settlement routes: decode, call the use case in a unit of work, encode. Nothing else."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import asyncpg
import msgspec

from services.settlement import handlers, store
from services.settlement.api import (
    AccountBalance,
    Balance,
    BalanceQuery,
    BankStatement,
    Disagreement,
    ListPayouts,
    OrderCheck,
    PayoutMadeView,
    PayoutPage,
    PayoutRun,
    PayoutView,
    ReconciledLine,
    ReconciliationReport,
    RunPayouts,
    SplitView,
    StatementLine,
    StatementPage,
    StatementQuery,
    ThreeWayPage,
    ThreeWayQuery,
    TrialBalance,
)
from services.settlement.reconciliation import BankLine, LineOutcome
from shared.clock import Clock, utc_now
from shared.errors import NotFound
from shared.http.api import Api, Call
from shared.http.pagination import cursor_of_type, encode_cursor
from shared.http.problems import bad_request, invalid
from shared.money import Money
from shared.tokens import Principal, Role

OPERATOR: frozenset[Role] = frozenset({"operator"})
PARTNER_OR_OPERATOR: frozenset[Role] = frozenset({"partner", "operator"})
DEFAULT_CURRENCY = "USD"
_BANK_COLUMNS = ("reference", "amount", "booked_at")
# ``kind`` (booked or returned) may follow; a blank cell is ``booked``.
_BANK_OPTIONAL_COLUMN = "kind"
_BANK_AMOUNT = re.compile(r"-?[0-9]{1,18}")
# A statement line's number is a smallint in the ledger.
_MAX_LINE = 32_767


@dataclass(frozen=True)
class SettlementHttp:
    clock: Clock = utc_now


@overload
def _storable(field: str, value: datetime) -> datetime: ...
@overload
def _storable(field: str, value: None) -> None: ...
def _storable(field: str, value: datetime | None) -> datetime | None:
    """A time the database can hold: an offset can push a valid RFC 3339 time out of the
    years 1..9999 once it is turned to UTC, which would fail in the driver, not here."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise invalid(field, "is out of range: years 1 to 9999 in UTC") from None


def _statement_cursor(cursor: str) -> tuple[datetime, str, int]:
    at, entry_id, line = cursor_of_type(cursor, str, str, int)
    try:
        booked_at = datetime.fromisoformat(at)
        if booked_at.tzinfo is None or not 0 < line <= _MAX_LINE:
            raise ValueError(at)
        return booked_at.astimezone(UTC), entry_id, line
    except (ValueError, OverflowError):
        raise invalid("cursor", "not a cursor this list returned") from None


def _own_partner(caller: Principal, partner_id: str) -> None:
    """A partner sees only its own money; anyone else's answers 404, as if it did not exist."""
    if caller.role != "operator" and caller.subject != partner_id:
        raise NotFound(f"partner {partner_id}")


def read_bank_csv(raw: bytes) -> dict[str, Any]:
    """A bank statement as CSV (header ``reference,amount,booked_at[,kind]``) in the JSON shape."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise bad_request("the CSV is not UTF-8") from None
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise bad_request(f"the CSV cannot be read: {exc}") from None
    header = tuple(cell.strip() for cell in rows[0]) if rows else ()
    if header not in (_BANK_COLUMNS, (*_BANK_COLUMNS, _BANK_OPTIONAL_COLUMN)):
        raise invalid(
            "body",
            f"the CSV's first row must be {','.join(_BANK_COLUMNS)}"
            f" (then optionally {_BANK_OPTIONAL_COLUMN})",
        )
    lines: list[dict[str, str]] = []
    for row in rows[1:]:
        if not row:
            continue
        # Named as the JSON body would name it: blank rows are not lines.
        where = f"lines[{len(lines)}]"
        if len(row) != len(header):
            raise invalid(where, f"needs {len(header)} columns")
        line = dict(zip(header, (cell.strip() for cell in row), strict=True))
        # Lenient conversion would read "1e3" or "١٢" as a number; a bank amount is digits.
        if not _BANK_AMOUNT.fullmatch(line["amount"]):
            raise invalid(f"{where}.amount", "must be whole minor units written in digits 0-9")
        if line.get(_BANK_OPTIONAL_COLUMN) == "":
            del line[_BANK_OPTIONAL_COLUMN]
        lines.append(line)
    return {"lines": lines}


def _money(amount: int, currency: str) -> Money:
    return Money(amount=amount, currency=currency)


def _split_of(row: asyncpg.Record) -> SplitView | None:
    if row["kind"] == "charge" and row["c_gross"] is not None:
        return SplitView(
            gross=row["c_gross"], fee_bps=row["c_fee_bps"], fee=row["c_fee"],
            share_bps=row["c_share_bps"], share=row["c_share"], margin=row["c_margin"],
            rule=row["c_rule"],
        )  # fmt: skip
    if row["kind"] == "refund" and row["r_gross"] is not None:
        return SplitView(
            gross=row["r_gross"], fee_bps=row["c_fee_bps"] or 0, fee=row["r_fee"],
            share_bps=row["c_share_bps"] or 0, share=row["r_share"], margin=row["r_margin"],
            rule=row["r_rule"],
        )  # fmt: skip
    return None


_ACCOUNT_NAMES = {
    "partner_pending": "pending",
    "partner_available": "available",
    "payouts_in_transit": "in_transit",
}


def _statement_line(row: asyncpg.Record) -> StatementLine:
    return StatementLine(
        id=f"{row['entry_id']}#{row['line']}",
        booked_at=row["booked_at"],
        kind=row["kind"],
        account=_ACCOUNT_NAMES[row["account"]],
        part=row["part"],
        amount=_money(row["amount"], row["currency"]),
        order_id=row["order_id"],
        charge_id=row["charge_id"],
        refund_id=row["refund_id"],
        payout_id=row["payout_id"],
        reference=row["reference"],
        split=_split_of(row),
    )


def _report(reconciled: handlers.Reconciled, created_at: datetime) -> ReconciliationReport:
    def line(outcome: LineOutcome) -> ReconciledLine:
        # A line naming no payout has no known currency: its amount is shown bare.
        currency = outcome.currency

        def money(amount: int | None) -> Money | None:
            return None if amount is None or currency is None else _money(amount, currency)

        return ReconciledLine(
            reference=outcome.reference,
            expected=money(outcome.expected),
            booked=money(outcome.booked),
            booked_amount=outcome.booked,
            payout_id=outcome.payout_id,
            status=outcome.status,
            kind=outcome.kind,
        )

    found = reconciled.outcomes
    return ReconciliationReport(
        id=reconciled.reconciliation_id,
        created_at=created_at,
        matched=[line(o) for o in found.matched],
        missing=[line(o) for o in reconciled.missing],
        unexpected=[line(o) for o in found.unexpected],
        mismatched=[line(o) for o in found.mismatched],
        returned=[line(o) for o in found.returned],
        already_reconciled=[line(o) for o in found.already_reconciled],
        statement_end=found.statement_end,
    )


def _order_check(row: asyncpg.Record) -> OrderCheck:
    currency = row["currency"]
    charged, ledger = row["charged"], row["receivable"]
    fees, owed, paid_out = row["fees"], row["owed_to_partners"], row["paid_out"]
    disagreements: list[Disagreement] = []
    # Confirming charges each line's amount, and the lines sum to the order's total.
    total, confirmed = row["placed_total"], row["confirmed"]
    if (confirmed is not None or row["status"] in ("confirmed", "fulfilled")) and (
        confirmed or 0
    ) != total:
        disagreements.append(
            Disagreement(
                "charges_match_order",
                f"the order's total is {total}, its confirmation charged {confirmed or 0}",
            )
        )
    if ledger != charged:
        disagreements.append(
            Disagreement(
                "ledger_matches_orders", f"orders charged {charged}, ledger holds {ledger}"
            )
        )
    if fees + owed != ledger:
        disagreements.append(
            Disagreement(
                "ledger_balances",
                f"fees {fees} and partners' {owed} do not add up to the {ledger} receivable",
            )
        )
    if paid_out > owed:
        disagreements.append(
            Disagreement(
                "paid_within_owed",
                f"paid out {paid_out}, more than the {owed} partners are owed: refunded after"
                " payout, the partners owe the difference back",
            )
        )
    if paid_out and row["status"] != "fulfilled":
        disagreements.append(
            Disagreement("paid_after_fulfilment", f"paid out {paid_out} before fulfilment")
        )
    return OrderCheck(
        order_id=row["order_id"],
        status=row["status"],
        order_total=_money(total, currency),
        charged=_money(charged, currency),
        ledger=_money(ledger, currency),
        fees=_money(fees, currency),
        owed_to_partners=_money(owed, currency),
        paid_out=_money(paid_out, currency),
        agrees=not disagreements,
        disagreements=disagreements,
    )


def build_api(deps: SettlementHttp) -> Api:
    api = Api("Partner marketplace: settlement")
    route = api.route

    @route(
        "GET", "/v1/balances/{partner_id}", summary="Read a partner's balances",
        roles=PARTNER_OR_OPERATOR, query=BalanceQuery, response=Balance, tag="balances",
    )  # fmt: skip
    async def get_balance(call: Call[None, BalanceQuery]) -> Balance:
        partner_id = call.path_id("partner_id", "partner")
        _own_partner(call.caller, partner_id)
        async with call.connection() as conn:
            currency = call.query.currency
            if currency is None:
                known = await store.partner_currencies(conn, partner_id)
                currency = known[0] if known else DEFAULT_CURRENCY
            owed = await store.partner_balances(conn, partner_id, currency)
        return Balance(
            partner_id=partner_id,
            currency=currency,
            pending=_money(owed.get("partner_pending", 0), currency),
            available=_money(owed.get("partner_available", 0), currency),
            in_transit=_money(owed.get("payouts_in_transit", 0), currency),
            paid=_money(owed.get("paid", 0), currency),
        )

    @route(
        "GET", "/v1/statements/{partner_id}", summary="Read a partner's ledger lines",
        roles=PARTNER_OR_OPERATOR, query=StatementQuery, response=StatementPage,
        tag="balances",
    )  # fmt: skip
    async def get_statement(call: Call[None, StatementQuery]) -> StatementPage:
        partner_id = call.path_id("partner_id", "partner")
        _own_partner(call.caller, partner_id)
        query = call.query
        after = _statement_cursor(query.cursor) if query.cursor is not None else None
        async with call.connection() as conn:
            rows = await store.statement_lines(
                conn,
                partner_id,
                since=_storable("query.from", query.since),
                until=_storable("query.to", query.until),
                after=after,
                limit=query.limit + 1,
            )
        page = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            next_cursor = encode_cursor(
                [last["booked_at"].isoformat(), last["entry_id"], last["line"]]
            )
        return StatementPage(
            partner_id=partner_id,
            items=[_statement_line(row) for row in page],
            next_cursor=next_cursor,
        )

    @route(
        "POST", "/v1/payouts/run", summary="Pay out every partner's available balance",
        roles=OPERATOR, body=RunPayouts, response=PayoutRun, status=201, tag="payouts",
    )  # fmt: skip
    async def run_payouts(call: Call[RunPayouts, None]) -> PayoutRun:
        as_of = _storable("as_of", call.body.as_of)
        async with call.transaction() as conn:
            made = await handlers.run_payouts(conn, as_of, deps.clock())
        return PayoutRun(
            payouts=[
                PayoutMadeView(
                    id=p.payout_id,
                    partner_id=p.partner_id,
                    amount=_money(p.amount, p.currency),
                    reference=p.reference,
                )
                for p in made
            ]
        )

    @route(
        "GET", "/v1/payouts", summary="List payouts", roles=PARTNER_OR_OPERATOR,
        query=ListPayouts, response=PayoutPage, tag="payouts",
    )  # fmt: skip
    async def list_payouts(call: Call[None, ListPayouts]) -> PayoutPage:
        partner_id = call.query.partner_id
        if call.caller.role == "partner":
            if partner_id is not None:
                _own_partner(call.caller, partner_id)
            partner_id = call.caller.subject
        after = cursor_of_type(call.query.cursor, str)[0] if call.query.cursor else None
        async with call.connection() as conn:
            rows = await store.payouts(
                conn, partner_id=partner_id, after=after, limit=call.query.limit + 1
            )
        page = rows[: call.query.limit]
        more = len(rows) > call.query.limit
        return PayoutPage(
            items=[
                PayoutView(
                    id=row["payout_id"],
                    partner_id=row["partner_id"],
                    amount=_money(row["amount"], row["currency"]),
                    reference=row["reference"],
                    as_of=row["as_of"],
                    status=row["status"],
                    created_at=row["created_at"],
                    paid_at=row["paid_at"],
                    failed_at=row["failed_at"],
                )
                for row in page
            ],
            next_cursor=encode_cursor([page[-1]["payout_id"]]) if more else None,
        )

    @route(
        "POST", "/v1/reconciliations", summary="Reconcile a bank statement with payouts",
        roles=OPERATOR, body=BankStatement, response=ReconciliationReport, status=201,
        tag="payouts", also_accepts={"text/csv": read_bank_csv},
    )  # fmt: skip
    async def create_reconciliation(call: Call[BankStatement, None]) -> ReconciliationReport:
        lines = [
            BankLine(
                line.reference,
                line.amount,
                _storable(f"lines[{number}].booked_at", line.booked_at),
                line.kind,
            )
            for number, line in enumerate(call.body.lines)
        ]
        async with call.transaction() as conn:
            reconciled = await handlers.reconcile(conn, lines)
            report = _report(reconciled, deps.clock())
            await store.insert_reconciliation(conn, report.id, report)
        return report

    @route(
        "GET", "/v1/reconciliations/{reconciliation_id}", summary="Read a reconciliation report",
        roles=OPERATOR, response=ReconciliationReport, tag="payouts",
    )  # fmt: skip
    async def get_reconciliation(call: Call[None, None]) -> ReconciliationReport:
        reconciliation_id = call.path_id("reconciliation_id", "reconciliation")
        async with call.connection() as conn:
            stored = await store.reconciliation(conn, reconciliation_id)
        if stored is None:
            raise NotFound(f"reconciliation {reconciliation_id}")
        return msgspec.json.decode(stored, type=ReconciliationReport)

    @route(
        "GET", "/v1/checks/three-way", summary="Check orders, ledger and payouts agree",
        roles=OPERATOR, query=ThreeWayQuery, response=ThreeWayPage, tag="checks",
    )  # fmt: skip
    async def three_way_check(call: Call[None, ThreeWayQuery]) -> ThreeWayPage:
        query = call.query
        after = cursor_of_type(query.cursor, str)[0] if query.cursor else None
        async with call.connection() as conn:
            rows = await store.three_way(
                conn,
                since=_storable("query.from", query.since),
                until=_storable("query.to", query.until),
                after=after,
                limit=query.limit + 1,
            )
        page = rows[: query.limit]
        more = len(rows) > query.limit
        return ThreeWayPage(
            items=[_order_check(row) for row in page],
            next_cursor=encode_cursor([page[-1]["order_id"]]) if more else None,
        )

    @route(
        "GET", "/v1/ledger/trial-balance", summary="Read the trial balance",
        roles=OPERATOR, response=TrialBalance, tag="checks",
    )  # fmt: skip
    async def trial_balance(call: Call[None, None]) -> TrialBalance:
        async with call.connection() as conn:
            rows = await store.trial_balance(conn)
        totals: dict[str, int] = {}
        accounts = []
        for row in rows:
            name = row["account"] + (f":{row['partner_id']}" if row["partner_id"] else "")
            accounts.append(AccountBalance(name, row["currency"], row["balance"]))
            totals[row["currency"]] = totals.get(row["currency"], 0) + row["balance"]
        return TrialBalance(accounts=accounts, totals=totals)

    return api
