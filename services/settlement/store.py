"""Every SQL query on settlement's own tables.  Writes are set-wise: one statement per table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from services.settlement.domain import (
    ChargedComponent,
    ChargeRecord,
    JournalEntry,
    OrderBook,
    RefundRecord,
)
from services.settlement.reconciliation import PayoutOnRecord
from services.settlement.split import Parts, Split
from shared.db import Connection

_ENTRY_COLUMNS = (
    "entry_id", "kind", "booked_at", "order_id", "charge_id", "refund_id", "payout_id", "event_id",
)  # fmt: skip
_POSTING_COLUMNS = (
    "entry_id",
    "line",
    "account",
    "partner_id",
    "currency",
    "amount",
    "part",
    "order_id",
)
_CHARGE_COLUMNS = (
    "charge_id", "kind", "order_id", "line_id", "offering_id", "component_index", "owner_id",
    "partner_id", "role", "agreement_id", "currency", "gross", "fee_bps", "fee", "share_bps",
    "share", "margin", "rule", "charged_at",
)  # fmt: skip
_REFUND_COLUMNS = (
    "refund_id", "charge_id", "order_id", "currency", "amount", "fee", "share", "margin", "rule",
    "refunded_at",
)  # fmt: skip


async def order_books(conn: Connection, order_ids: Sequence[str]) -> dict[str, OrderBook]:
    rows = await conn.fetch(
        "SELECT order_id, customer_id, currency, status, placed_at, placed_total,"
        " fulfilled FROM settled_orders WHERE order_id = ANY($1::text[])",
        list(order_ids),
    )
    return {row["order_id"]: OrderBook(**dict(row)) for row in rows}


async def load_charges(conn: Connection, books: dict[str, OrderBook]) -> None:
    """Fill each book with its charges and what of each was refunded so far."""
    if not books:
        return
    order_ids = list(books)
    for row in await conn.fetch(
        f"SELECT {', '.join(_CHARGE_COLUMNS)} FROM charges WHERE order_id = ANY($1::text[])",
        order_ids,
    ):
        record = _charge_record(row)
        books[record.charge.order_id].charges[record.charge.charge_id] = record
    for row in await conn.fetch(
        "SELECT order_id, charge_id, sum(fee)::bigint AS fee, sum(share)::bigint AS share,"
        " sum(margin)::bigint AS margin FROM refunds WHERE order_id = ANY($1::text[])"
        " GROUP BY order_id, charge_id",
        order_ids,
    ):
        books[row["order_id"]].refunded[row["charge_id"]] = Parts(
            row["fee"], row["share"], row["margin"]
        )


def _charge_record(row: asyncpg.Record) -> ChargeRecord:
    charge = ChargedComponent(
        charge_id=row["charge_id"],
        kind=row["kind"],
        order_id=row["order_id"],
        line_id=row["line_id"],
        offering_id=row["offering_id"],
        component_index=row["component_index"],
        owner_id=row["owner_id"],
        partner_id=row["partner_id"],
        role=row["role"],
        agreement_id=row["agreement_id"],
        share_bps=row["share_bps"],
        amount=row["gross"],
        currency=row["currency"],
    )
    split = Split(
        row["gross"],
        row["fee_bps"],
        row["share_bps"],
        Parts(row["fee"], row["share"], row["margin"]),
        row["rule"],
    )
    return ChargeRecord(charge, split, row["charged_at"])


async def save_order_books(conn: Connection, books: Iterable[OrderBook]) -> None:
    rows = [
        (b.order_id, b.customer_id, b.currency, b.status, b.placed_at, b.placed_total,
         b.fulfilled)
        for b in books
    ]  # fmt: skip
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        """
        INSERT INTO settled_orders (order_id, customer_id, currency, status, placed_at,
                                    placed_total, fulfilled)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                             $5::timestamptz[], $6::bigint[], $7::boolean[])
        ON CONFLICT (order_id) DO UPDATE SET
            status = EXCLUDED.status,
            fulfilled = EXCLUDED.fulfilled
        """,
        *[list(column) for column in columns],
    )


async def insert_charges(conn: Connection, records: Sequence[ChargeRecord]) -> None:
    if not records:
        return
    rows = []
    for record in records:
        c, s = record.charge, record.split
        rows.append(
            (c.charge_id, c.kind, c.order_id, c.line_id, c.offering_id, c.component_index,
             c.owner_id, c.partner_id, c.role, c.agreement_id, c.currency, s.gross, s.fee_bps,
             s.fee, s.share_bps, s.share, s.margin, s.rule, record.charged_at)
        )  # fmt: skip
    await conn.copy_records_to_table("charges", records=rows, columns=_CHARGE_COLUMNS)


async def insert_refunds(conn: Connection, records: Sequence[RefundRecord]) -> None:
    if not records:
        return
    rows = [
        (r.refund_id, r.charge_id, r.order_id, r.currency, r.split.gross, r.split.fee,
         r.split.share, r.split.margin, r.split.rule, r.refunded_at)
        for r in records
    ]  # fmt: skip
    await conn.copy_records_to_table("refunds", records=rows, columns=_REFUND_COLUMNS)


async def insert_entries(conn: Connection, entries: Sequence[JournalEntry]) -> None:
    """Book entries: their rows, then all their postings in one statement (checked balanced)."""
    if not entries:
        return
    await conn.copy_records_to_table(
        "journal_entries",
        records=[
            (
                e.entry_id,
                e.kind,
                e.booked_at,
                e.order_id,
                e.charge_id,
                e.refund_id,
                e.payout_id,
                e.event_id,
            )
            for e in entries
        ],
        columns=_ENTRY_COLUMNS,
    )
    await conn.copy_records_to_table(
        "postings",
        records=[
            (e.entry_id, line, p.account, p.partner_id, e.currency, p.amount, p.part, p.order_id)
            for e in entries
            for line, p in enumerate(e.postings, start=1)
        ],
        columns=_POSTING_COLUMNS,
    )


# Reading balances, statements and the trial balance

# The kept balances' only index leads with the account kind (PostgreSQL 15
# has no skip scan): naming a partner's three kinds makes a balance read three
# index probes instead of a scan of every partner's accounts.
_PARTNER_ACCOUNTS = "('partner_pending', 'partner_available', 'payouts_in_transit')"


async def partner_balances(conn: Connection, partner_id: str, currency: str) -> dict[str, int]:
    """Per partner account, what the marketplace owes the partner (credit balance, sign turned)."""
    rows = await conn.fetch(
        "SELECT account, -balance AS owed FROM account_balances"
        f" WHERE account IN {_PARTNER_ACCOUNTS} AND partner_id = $1 AND currency = $2",
        partner_id,
        currency,
    )
    owed = {row["account"]: row["owed"] for row in rows}
    paid = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0)::bigint FROM payouts"
        " WHERE partner_id = $1 AND currency = $2 AND status = 'paid'",
        partner_id,
        currency,
    )
    owed["paid"] = paid
    return owed


async def partner_currencies(conn: Connection, partner_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT currency FROM account_balances"
        f" WHERE account IN {_PARTNER_ACCOUNTS} AND partner_id = $1 ORDER BY currency",
        partner_id,
    )
    return [row["currency"] for row in rows]


async def statement_lines(
    conn: Connection,
    partner_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """
        SELECT e.booked_at, p.entry_id, p.line, e.kind, p.account, p.part, p.currency,
               -p.amount AS amount, p.order_id, e.charge_id, e.refund_id, e.payout_id,
               po.reference,
               c.gross AS c_gross, c.fee_bps AS c_fee_bps, c.fee AS c_fee,
               c.share_bps AS c_share_bps, c.share AS c_share, c.margin AS c_margin,
               c.rule AS c_rule,
               r.amount AS r_gross, r.fee AS r_fee, r.share AS r_share, r.margin AS r_margin,
               r.rule AS r_rule
          FROM postings p
          JOIN journal_entries e ON e.entry_id = p.entry_id
          LEFT JOIN charges c ON c.charge_id = e.charge_id
          LEFT JOIN refunds r ON r.refund_id = e.refund_id
          LEFT JOIN payouts po ON po.payout_id = e.payout_id
         WHERE p.partner_id COLLATE "C" = $1
           AND ($2::timestamptz IS NULL OR e.booked_at >= $2)
           AND ($3::timestamptz IS NULL OR e.booked_at < $3)
           AND ($4::timestamptz IS NULL OR (e.booked_at, p.entry_id, p.line) > ($4, $5, $6))
         ORDER BY e.booked_at, p.entry_id, p.line
         LIMIT $7
        """,
        partner_id,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        after[2] if after else None,
        limit,
    )


async def trial_balance(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT account, partner_id, currency, balance FROM account_balances"
        " ORDER BY currency, account, partner_id"
    )


async def lock_payout_runs(conn: Connection) -> None:
    """Payout runs take turns: the second sees what the first paid."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _PAYOUT_RUN_LOCK)


_PAYOUT_RUN_LOCK = 0x7061796F757473  # "payouts"


async def payable_by_order(
    conn: Connection, as_of: datetime
) -> list[tuple[str, str, str | None, int]]:
    """``(partner, currency, order, amount)`` payable at ``as_of``.

    What became available by ``as_of``, less every payout ever made (a payout
    run with an earlier ``as_of`` after a later one must not pay again), and
    never more than is available now: money refunded since ``as_of`` went
    back to the customer and is not the partner's to be paid.
    """
    rows = await conn.fetch(
        """
        SELECT p.partner_id, p.currency, p.order_id,
               least(-coalesce(sum(p.amount) FILTER (
                         WHERE e.kind = 'payout' OR e.booked_at <= $1), 0),
                     -sum(p.amount))::bigint AS payable
          FROM postings p JOIN journal_entries e ON e.entry_id = p.entry_id
         WHERE p.account = 'partner_available'
         GROUP BY p.partner_id, p.currency, p.order_id
        """,
        as_of,
    )
    return [(r["partner_id"], r["currency"], r["order_id"], r["payable"]) for r in rows]


async def insert_payout(
    conn: Connection,
    *,
    payout_id: str,
    partner_id: str,
    currency: str,
    amount: int,
    reference: str,
    as_of: datetime,
) -> bool:
    """False if this partner was already paid in this currency for ``as_of``."""
    inserted = await conn.fetchval(
        "INSERT INTO payouts (payout_id, partner_id, currency, amount, reference, as_of, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'pending')"
        " ON CONFLICT (partner_id, currency, as_of) DO NOTHING RETURNING true",
        payout_id,
        partner_id,
        currency,
        amount,
        reference,
        as_of,
    )
    return bool(inserted)


_PAYOUT_COLUMNS = (
    "payout_id, partner_id, currency, amount, reference, as_of, status, created_at, paid_at,"
    " failed_at"
)


async def payouts(
    conn: Connection, *, partner_id: str | None, after: str | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_PAYOUT_COLUMNS} FROM payouts"
        " WHERE ($1::text IS NULL OR partner_id = $1) AND ($2::text IS NULL OR payout_id > $2)"
        " ORDER BY payout_id LIMIT $3",
        partner_id,
        after,
        limit,
    )


_ON_RECORD = "payout_id, reference, partner_id, amount, currency, status, as_of, created_at"


async def payouts_by_reference(conn: Connection, references: Sequence[str]) -> list[PayoutOnRecord]:
    """Locked until the transaction ends: two reconciliations take turns on a payout."""
    rows = await conn.fetch(
        f"SELECT {_ON_RECORD} FROM payouts WHERE reference = ANY($1::text[]) FOR UPDATE",
        list(references),
    )
    return [PayoutOnRecord(**dict(row)) for row in rows]


async def payouts_in_transit(conn: Connection) -> list[PayoutOnRecord]:
    rows = await conn.fetch(
        f"SELECT {_ON_RECORD} FROM payouts WHERE status = 'pending' ORDER BY payout_id"
    )
    return [PayoutOnRecord(**dict(row)) for row in rows]


async def payout_items(conn: Connection, payout_id: str) -> list[tuple[str | None, int]]:
    """What a payout paid, order by order (from its own journal entry)."""
    rows = await conn.fetch(
        "SELECT order_id, amount FROM postings"
        " WHERE entry_id = $1 AND account = 'partner_available' ORDER BY line",
        f"payout:{payout_id}",
    )
    return [(row["order_id"], row["amount"]) for row in rows]


async def mark_paid(conn: Connection, payout_id: str, booked_at: datetime) -> None:
    await conn.execute(
        "UPDATE payouts SET status = 'paid', paid_at = $2 WHERE payout_id = $1",
        payout_id,
        booked_at,
    )


async def mark_failed(conn: Connection, payout_id: str, returned_at: datetime) -> None:
    await conn.execute(
        "UPDATE payouts SET status = 'failed', failed_at = $2 WHERE payout_id = $1",
        payout_id,
        returned_at,
    )


async def insert_reconciliation(conn: Connection, reconciliation_id: str, report: Any) -> None:
    await conn.execute(
        "INSERT INTO reconciliations (reconciliation_id, report) VALUES ($1, $2::jsonb)",
        reconciliation_id,
        msgspec.json.encode(report).decode(),
    )


async def reconciliation(conn: Connection, reconciliation_id: str) -> bytes | None:
    report: str | None = await conn.fetchval(
        "SELECT report::text FROM reconciliations WHERE reconciliation_id = $1", reconciliation_id
    )
    return report.encode() if report is not None else None


async def three_way(
    conn: Connection,
    *,
    since: datetime | None,
    until: datetime | None,
    after: str | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Per order: what the orders events charged, what the ledger holds, what was paid out."""
    return await conn.fetch(
        """
        WITH picked AS (
            SELECT order_id, currency, placed_at, status, placed_total FROM settled_orders
             WHERE ($1::timestamptz IS NULL OR placed_at >= $1)
               AND ($2::timestamptz IS NULL OR placed_at < $2)
               AND ($3::text IS NULL OR order_id > $3)
             ORDER BY order_id LIMIT $4
        ),
        charged AS (
            SELECT c.order_id, sum(c.gross)::bigint AS charged,
                   -- What confirming the order charged: usage is charged later, apart.
                   sum(c.gross) FILTER (WHERE c.kind = 'order')::bigint AS confirmed
              FROM charges c JOIN picked USING (order_id) GROUP BY c.order_id
        ),
        refunded AS (
            SELECT r.order_id, sum(r.amount)::bigint AS refunded FROM refunds r
              JOIN picked USING (order_id) GROUP BY r.order_id
        ),
        ledger AS (
            SELECT b.order_id, b.customer_receivables AS receivable,
                   -b.fee_revenue AS fees,
                   -(b.partner_pending + b.partner_available + b.payouts_in_transit + b.cash)
                       AS owed_to_partners,
                   -(b.payouts_in_transit + b.cash) AS paid_out
              FROM order_balances b JOIN picked USING (order_id)
        )
        SELECT picked.order_id, picked.currency, picked.status, picked.placed_total,
               charged.confirmed,
               coalesce(charged.charged, 0) - coalesce(refunded.refunded, 0) AS charged,
               coalesce(ledger.receivable, 0) AS receivable,
               coalesce(ledger.fees, 0) AS fees,
               coalesce(ledger.owed_to_partners, 0) AS owed_to_partners,
               coalesce(ledger.paid_out, 0) AS paid_out
          FROM picked
          LEFT JOIN charged USING (order_id)
          LEFT JOIN refunded USING (order_id)
          LEFT JOIN ledger USING (order_id)
         ORDER BY picked.order_id
        """,
        since,
        until,
        after,
        limit,
    )
