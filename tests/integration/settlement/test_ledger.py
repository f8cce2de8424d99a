"""The ledger's rules, held by PostgreSQL itself, and chunks of order events booked set-wise."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from services.settlement import handlers, store
from services.settlement.__main__ import MIGRATIONS
from services.settlement.consumers import OrderEventBooker
from shared import db
from shared.consumer import PermanentError
from shared.ids import new_id
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from tests.integration.settlement.conftest import (
    as_consumed,
    assert_balances_follow_postings,
    book,
)
from tests.integration.settlement.order_events import OrderEvent, OrderScript, Part
from tests.support.waiting import wait_for

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def three_partners() -> tuple[str, str, str, Part, Part, Part]:
    owner, isv, integrator = new_id("ptr"), new_id("ptr"), new_id("ptr")
    return (
        owner,
        isv,
        integrator,
        Part(isv, "isv", 7_000, new_id("agr")),
        Part(integrator, "integrator", 9_000, new_id("agr")),
        Part(owner, "managed_service", 10_000),
    )


async def owed(pool: db.Pool, partner_id: str) -> dict[str, int]:
    async with pool.acquire() as conn:
        found = await store.partner_balances(conn, partner_id, "USD")
    return {
        "pending": found.get("partner_pending", 0),
        "available": found.get("partner_available", 0),
    }


async def post_entry(pool: db.Pool, entry_id: str, postings: str) -> None:
    """An entry and its postings in one transaction, written by hand."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO journal_entries (entry_id, kind, booked_at) VALUES ($1, 'charge', now())",
            entry_id,
        )
        await conn.execute(
            "INSERT INTO postings (entry_id, line, account, partner_id, currency, amount, part)"
            f" VALUES {postings}"
        )


async def test_an_unbalanced_insert_is_refused_by_the_database(ledger_pool: db.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await post_entry(
            ledger_pool,
            "charge:x",
            "('charge:x', 1, 'customer_receivables', NULL, 'USD', 100, 'gross'),"
            " ('charge:x', 2, 'fee_revenue', NULL, 'USD', -99, 'fee')",
        )
    # Zero in sum, but across two currencies: refused too.
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        await post_entry(
            ledger_pool,
            "charge:y",
            "('charge:y', 1, 'customer_receivables', NULL, 'USD', 100, 'gross'),"
            " ('charge:y', 2, 'fee_revenue', NULL, 'EUR', -100, 'fee')",
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="does not exist"):
        await post_entry(
            ledger_pool,
            "charge:w",
            "('charge:ghost', 1, 'customer_receivables', NULL, 'USD', 100, 'gross'),"
            " ('charge:ghost', 2, 'fee_revenue', NULL, 'USD', -100, 'fee')",
        )
    await post_entry(
        ledger_pool,
        "charge:z",
        "('charge:z', 1, 'customer_receivables', NULL, 'USD', 100, 'gross'),"
        " ('charge:z', 2, 'fee_revenue', NULL, 'USD', -100, 'fee')",
    )
    async with ledger_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM postings") == 2


async def test_postings_cannot_be_added_to_an_entry_after_its_transaction(
    ledger_pool: db.Pool,
) -> None:
    pair = (
        "('charge:a', {0}, 'customer_receivables', NULL, 'USD', 100, 'gross'),"
        " ('charge:a', {1}, 'fee_revenue', NULL, 'USD', -100, 'fee')"
    )
    async with ledger_pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO journal_entries (entry_id, kind, booked_at)"
            " VALUES ('charge:a', 'charge', now())"
        )
        await conn.execute(
            "INSERT INTO postings (entry_id, line, account, partner_id, currency, amount, part)"
            f" VALUES {pair.format(1, 2)}"
        )
        # The creating transaction may still write the entry in more than one statement.
        await conn.execute(
            "INSERT INTO postings (entry_id, line, account, partner_id, currency, amount, part)"
            f" VALUES {pair.format(3, 4)}"
        )
    async with ledger_pool.acquire() as conn:
        # Balanced, but a later transaction: the entry is closed.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="charge:a is closed"):
            await conn.execute(
                "INSERT INTO postings (entry_id, line, account, partner_id, currency, amount, part)"
                f" VALUES {pair.format(5, 6)}"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="is closed"):
            await conn.copy_records_to_table(
                "postings",
                records=[
                    ("charge:a", 7, "customer_receivables", None, "USD", 5, "gross"),
                    ("charge:a", 8, "fee_revenue", None, "USD", -5, "fee"),
                ],
                columns=["entry_id", "line", "account", "partner_id", "currency", "amount", "part"],
            )
        assert await conn.fetchval("SELECT count(*) FROM postings") == 4


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount = amount * 2",
        "DELETE FROM postings",
        "TRUNCATE postings CASCADE",
        "UPDATE journal_entries SET booked_at = now()",
        "DELETE FROM journal_entries",
        "UPDATE charges SET fee = 0",
        "DELETE FROM refunds",
    ],
)
async def test_written_ledger_rows_cannot_be_changed(ledger_pool: db.Pool, statement: str) -> None:
    owner, _, _, isv_part, _, _ = three_partners()
    order = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    charge = order.charge(isv_part, 10_000, 0)
    events = [order.placed(10_000), order.confirmed([charge]), order.refunded([(charge, 1)])]
    await book(ledger_pool, events)
    async with ledger_pool.acquire() as conn:
        before = await conn.fetchval("SELECT sum(abs(amount)) FROM postings")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT sum(abs(amount)) FROM postings") == before


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE account_balances SET balance = balance + 1",
        "INSERT INTO account_balances VALUES ('cash', NULL, 'EUR', 5)",
        "DELETE FROM account_balances",
        "TRUNCATE account_balances",
        "UPDATE order_balances SET cash = cash - 1",
        "DELETE FROM order_balances",
    ],
)
async def test_kept_balances_move_only_with_postings(ledger_pool: db.Pool, statement: str) -> None:
    owner, _, _, isv_part, _, _ = three_partners()
    order = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    events = [order.placed(10_000), order.confirmed([order.charge(isv_part, 10_000, 0)])]
    await book(ledger_pool, events)
    async with ledger_pool.acquire() as conn:
        refused = pytest.raises(asyncpg.InsufficientPrivilegeError, match="balances follow the")
        with refused:
            await conn.execute(statement)
        kept = await conn.fetchval(
            "SELECT balance FROM account_balances WHERE account = 'customer_receivables'"
        )
        assert kept == 10_000


async def test_a_chunk_books_each_partners_share_to_the_minor_unit(ledger_pool: db.Pool) -> None:
    owner, isv, integrator, isv_part, integrator_part, own_part = three_partners()
    order = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    isv_charge = order.charge(isv_part, 199_998, 0)
    integrator_charge = order.charge(integrator_part, 49_998, 1)
    await book(
        ledger_pool,
        [
            order.placed(249_996),
            order.confirmed([isv_charge, integrator_charge]),
            order.usage(own_part, 2, unit_amount=37, quantity=1_234),
        ],
    )
    # ISV 199,998 at 70 %: fee 5,999.94 / share 135,798.642 / margin 58,199.418 -> floors
    # leave 2 units for the largest remainders, fee and share: 6,000 / 135,799 / 58,199.
    # Integrator 49,998 at 90 %: 1,499.94 / 43,648.254 / 4,849.806 -> 1,500 / 43,648 / 4,850.
    # Usage 1,234 x 37 = 45,658, the owner's own: fee 1,369.74 -> 1,370, share 44,288.
    assert await owed(ledger_pool, isv) == {"pending": 135_799, "available": 0}
    assert await owed(ledger_pool, integrator) == {"pending": 43_648, "available": 0}
    assert await owed(ledger_pool, owner) == {"pending": 58_199 + 4_850 + 44_288, "available": 0}

    await book(ledger_pool, [order.fulfilled()])
    assert await owed(ledger_pool, isv) == {"pending": 0, "available": 135_799}
    assert await owed(ledger_pool, owner) == {"pending": 0, "available": 107_337}

    # After fulfilment usage is available at once; a refund takes from what is available.
    await book(
        ledger_pool,
        [
            order.usage(own_part, 2, unit_amount=37, quantity=100),
            order.refunded([(isv_charge, 199_998)]),
        ],
    )
    assert await owed(ledger_pool, isv) == {"pending": 0, "available": 0}
    # 3,700 usage: fee 111, share 3,589; the ISV charge's margin 58,199 goes back.
    assert await owed(ledger_pool, owner) == {"pending": 0, "available": 107_337 + 3_589 - 58_199}


def at(event: OrderEvent, when: datetime) -> OrderEvent:
    envelope, payload = event
    return msgspec.structs.replace(envelope, occurred_at=when), payload


async def test_a_run_as_of_before_a_refund_does_not_pay_the_refunded_money(
    ledger_pool: db.Pool,
) -> None:
    """Available at ``as_of``, refunded since: paying it pays money the customer got back."""
    owner = new_id("ptr")
    script = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    charge = script.charge(Part(owner, "isv", 10_000), 1_000, 0)
    fulfilled_at = NOW - timedelta(days=2)
    await book(
        ledger_pool,
        [
            at(script.placed(1_000), fulfilled_at),
            at(script.confirmed([charge]), fulfilled_at),
            at(script.fulfilled(), fulfilled_at),
            at(script.refunded([(charge, 400)]), NOW),
        ],
    )
    async with db.unit_of_work(ledger_pool) as conn:
        made = await handlers.run_payouts(conn, NOW - timedelta(days=1), NOW)
    # 970 was available at as_of; 388 of it was refunded since: 582 is all that is still owed.
    assert [(p.partner_id, p.amount) for p in made] == [(owner, 582)]
    assert await owed(ledger_pool, owner) == {"pending": 0, "available": 0}


async def test_a_share_no_split_can_honour_is_dead_lettered_without_retries(
    ledger_pool: db.Pool,
) -> None:
    """A share above 100 % can never be split: retrying it only delays the partition."""
    owner = new_id("ptr")
    script = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    impossible = script.charge(Part(new_id("ptr"), "isv", 20_000, new_id("agr")), 1_000, 0)
    with pytest.raises(PermanentError):
        await book(ledger_pool, [script.placed(1_000), script.confirmed([impossible])])
    assert await owed(ledger_pool, owner) == {"pending": 0, "available": 0}


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE payouts SET amount = amount + 1",
        "UPDATE payouts SET partner_id = 'ptr_someone_else'",
        "UPDATE payouts SET reference = 'MP-FORGED'",
        "DELETE FROM payouts",
        "TRUNCATE payouts CASCADE",
    ],
)
async def test_a_payout_keeps_its_terms_once_made(ledger_pool: db.Pool, statement: str) -> None:
    owner = new_id("ptr")
    script = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    charge = script.charge(Part(owner, "isv", 10_000), 1_000, 0)
    earlier = NOW - timedelta(days=2)
    await book(
        ledger_pool,
        [
            at(script.placed(1_000), earlier),
            at(script.confirmed([charge]), earlier),
            at(script.fulfilled(), earlier),
        ],
    )
    async with db.unit_of_work(ledger_pool) as conn:
        [made] = await handlers.run_payouts(conn, NOW - timedelta(days=1), NOW)
    async with ledger_pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
        row = await conn.fetchrow("SELECT partner_id, amount, reference FROM payouts")
        assert row is not None
        assert (row["partner_id"], row["amount"], row["reference"]) == (
            owner,
            made.amount,
            made.reference,
        )
        # Its status still moves forward, as a reconciliation does.
        await conn.execute("UPDATE payouts SET status = 'paid', paid_at = now()")


def _order_life(parts: tuple[Part, Part, Part]) -> list[OrderEvent]:
    isv_part, integrator_part, own_part = parts
    order = OrderScript(customer_id=new_id("cus"), owner_id=own_part.partner_id)
    charges = [
        order.charge(isv_part, 99_999, 0),
        order.charge(integrator_part, 12_345, 1),
        order.charge(own_part, 777, 2),
    ]
    return [
        order.placed(99_999 + 12_345 + 777),
        order.confirmed(charges),
        order.usage(own_part, 3, 7, 11),
        order.refunded([(charges[0], 33_333)]),
        order.fulfilled(),
    ]


async def test_balances_kept_from_a_ledger_booked_before_they_existed(
    fresh_database: str, tmp_path: Path
) -> None:
    """The migration that adds the kept balances fills them from the postings already booked."""
    before = migrations_before("0007", tmp_path / "migrations")
    setup = await asyncpg.connect(fresh_database)
    try:
        await migrate(setup, [("plumbing", PLUMBING_MIGRATIONS), ("settlement", before)])
    finally:
        await setup.close()
    pool = await db.create_pool(fresh_database, min_size=1, max_size=2)
    try:
        owner, _, _, *parts = three_partners()
        await book(pool, _order_life((parts[0], parts[1], parts[2])))
        async with db.unit_of_work(pool) as paying:
            await handlers.run_payouts(paying, NOW + timedelta(days=3650), NOW)
        await book(pool, _order_life((parts[0], parts[1], parts[2])))
        async with pool.acquire() as conn:
            owed_before = await conn.fetch(
                "SELECT account, partner_id, currency, sum(amount)::bigint AS balance"
                " FROM postings GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
            assert await migrate(conn, [("settlement", MIGRATIONS)]) != []
            assert await store.trial_balance(conn) == owed_before
        await assert_balances_follow_postings(fresh_database)
        # Booking goes on through the kept balances.
        await book(pool, _order_life((parts[0], parts[1], parts[2])))
        await assert_balances_follow_postings(fresh_database)
        assert (await owed(pool, owner))["available"] > 0
    finally:
        await pool.close()


def migrations_before(version: str, into: Path) -> Path:
    """The settlement migrations numbered below ``version``: the schema an older release ran."""
    into.mkdir()
    for migration in sorted(MIGRATIONS.glob("*.sql")):
        if migration.name < version:
            shutil.copy(migration, into / migration.name)
    return into


async def test_postings_booked_while_the_balances_migration_runs_are_kept_too(
    fresh_database: str, tmp_path: Path
) -> None:
    """A rolling upgrade: the old release still books a chunk while the new one migrates.

    The migration that adds the kept balances fills them from the postings it
    can see, then adds the trigger; a chunk committed in between must not be
    left out of the balances for good.
    """
    setup = await asyncpg.connect(fresh_database)
    try:
        before = migrations_before("0007", tmp_path / "migrations")
        await migrate(setup, [("plumbing", PLUMBING_MIGRATIONS), ("settlement", before)])
    finally:
        await setup.close()
    _, _, _, *parts = three_partners()
    old_release, new_release, watcher = [await asyncpg.connect(fresh_database) for _ in range(3)]
    try:
        booking = old_release.transaction()
        await booking.start()
        await OrderEventBooker(300).apply(
            old_release, as_consumed(_order_life((parts[0], parts[1], parts[2])))
        )
        migrating = asyncio.create_task(migrate(new_release, [("settlement", MIGRATIONS)]))
        await wait_for(
            lambda: watcher.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                new_release.get_server_pid(),
            ),
            message="the migration never waited for the old release's booking",
        )
        await booking.commit()
        assert await migrating != []
    finally:
        for conn in (old_release, new_release, watcher):
            await conn.close()
    await assert_balances_follow_postings(fresh_database)


async def test_a_failed_payout_never_becomes_paid_in_the_database(ledger_pool: db.Pool) -> None:
    owner = new_id("ptr")
    script = OrderScript(customer_id=new_id("cus"), owner_id=owner)
    charge = script.charge(Part(owner, "isv", 10_000), 1_000, 0)
    earlier = NOW - timedelta(days=2)
    await book(
        ledger_pool,
        [
            at(event, earlier)
            for event in (script.placed(1_000), script.confirmed([charge]), script.fulfilled())
        ],
    )
    async with db.unit_of_work(ledger_pool) as conn:
        await handlers.run_payouts(conn, NOW - timedelta(days=1), NOW)
    async with ledger_pool.acquire() as conn:
        await conn.execute("UPDATE payouts SET status = 'paid'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="is paid: it cannot become"):
            await conn.execute("UPDATE payouts SET status = 'pending'")
        await conn.execute("UPDATE payouts SET status = 'failed'")
        for status in ("paid", "pending"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="is failed"):
                await conn.execute("UPDATE payouts SET status = $1", status)
        assert await conn.fetchval("SELECT status FROM payouts") == "failed"


async def test_a_partners_balances_are_read_by_index_among_many_partners(
    ledger_pool: db.Pool,
) -> None:
    """A balance read probes the kept balances' key, never scans every partner's accounts."""
    async with db.unit_of_work(ledger_pool) as conn:
        # 3,000 partners, one charge each, booked by hand in one transaction.
        await conn.execute(
            "INSERT INTO journal_entries (entry_id, kind, booked_at)"
            " SELECT 'charge:' || g, 'charge', now() FROM generate_series(1, 3000) g"
        )
        await conn.execute(
            "INSERT INTO postings (entry_id, line, account, partner_id, currency, amount, part)"
            " SELECT 'charge:' || g, line, account, partner, 'USD', amount, 'share'"
            "   FROM generate_series(1, 3000) g, LATERAL (VALUES"
            "     (1, 'customer_receivables', NULL, 300),"
            "     (2, 'partner_pending', 'ptr_' || g, -100),"
            "     (3, 'partner_available', 'ptr_' || g, -100),"
            "     (4, 'payouts_in_transit', 'ptr_' || g, -100))"
            " AS p(line, account, partner, amount)"
        )
    async with ledger_pool.acquire() as conn:
        await conn.execute("ANALYZE account_balances")
        # This backend's scans not yet reported (``pg_stat_xact_*``), before and after.
        scans = (
            "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
            " WHERE relname = 'account_balances'"
        )
        async with conn.transaction():
            before = await conn.fetchrow(scans)
            balances = await store.partner_balances(conn, "ptr_77", "USD")
            currencies = await store.partner_currencies(conn, "ptr_77")
            after = await conn.fetchrow(scans)
    assert balances == {
        "partner_pending": 100,
        "partner_available": 100,
        "payouts_in_transit": 100,
        "paid": 0,
    }
    assert currencies == ["USD"]
    assert before is not None
    assert after is not None
    assert after["seq_scan"] - before["seq_scan"] == 0
    assert after["idx_scan"] > before["idx_scan"]
