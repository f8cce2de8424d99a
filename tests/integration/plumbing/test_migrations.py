"""Versioned migrations: applied once, recorded, never re-run or skipped.

Also the ones that run outside a transaction to build an index concurrently:
writes go on while they build, a failed build is retried from scratch.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.migrations import PLUMBING_MIGRATIONS, MigrationError, discover, migrate
from tests.support.infra import unique_name
from tests.support.waiting import wait_for


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    connection = await asyncpg.connect(fresh_database)
    yield connection
    await connection.close()


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(sql)


async def tables(conn: asyncpg.Connection[asyncpg.Record]) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


async def recorded(conn: asyncpg.Connection[asyncpg.Record]) -> list[tuple[str, int, str]]:
    rows = await conn.fetch(
        "SELECT namespace, version, name FROM schema_migrations ORDER BY namespace, version"
    )
    return [(row["namespace"], row["version"], row["name"]) for row in rows]


async def test_migrations_apply_once_and_a_rerun_applies_nothing(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    write(folder, "0002_balances.sql", "CREATE TABLE balances (id text, amount bigint);")
    sources = [("plumbing", PLUMBING_MIGRATIONS), ("svc", folder)]

    # Every plumbing migration there is (they grow), then the service's own.
    plumbing = discover("plumbing", PLUMBING_MIGRATIONS)
    applied = await migrate(conn, sources)
    assert applied == [
        *(f"plumbing/{m.version:04d}_{m.name}" for m in plumbing),
        "svc/0001_accounts",
        "svc/0002_balances",
    ]
    assert {"accounts", "balances", "outbox", "processed_events", "idempotency_keys"} <= (
        await tables(conn)
    )
    assert await recorded(conn) == [
        *(("plumbing", m.version, m.name) for m in plumbing),
        ("svc", 1, "accounts"),
        ("svc", 2, "balances"),
    ]
    await conn.execute("INSERT INTO accounts VALUES ('kept')")

    assert await migrate(conn, sources) == []
    assert await conn.fetchval("SELECT count(*) FROM accounts") == 1  # not re-created

    write(folder, "0003_payouts.sql", "CREATE TABLE payouts (id text);")
    assert await migrate(conn, sources) == ["svc/0003_payouts"]
    assert "payouts" in await tables(conn)


async def test_a_changed_applied_migration_stops_start_up(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text PRIMARY KEY);")
    await migrate(conn, [("svc", folder)])

    write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id bigint PRIMARY KEY);")
    write(folder, "0002_more.sql", "CREATE TABLE more (id text);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(conn, [("svc", folder)])
    assert "more" not in await tables(conn)
    assert await recorded(conn) == [("svc", 1, "accounts")]


async def test_a_new_migration_numbered_below_an_applied_one_stops_start_up(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text);")
    write(folder, "0003_payouts.sql", "CREATE TABLE payouts (id text);")
    await migrate(conn, [("svc", folder)])

    write(folder, "0002_late.sql", "CREATE TABLE late (id text);")
    with pytest.raises(MigrationError, match="older than applied version 3"):
        await migrate(conn, [("svc", folder)])
    assert "late" not in await tables(conn)


async def test_a_failing_migration_leaves_no_trace(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", "CREATE TABLE accounts (id text);")
    write(folder, "0002_broken.sql", "CREATE TABLE half (id text); SELECT * FROM nowhere;")
    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(conn, [("svc", folder)])
    assert await recorded(conn) == [("svc", 1, "accounts")]
    assert "half" not in await tables(conn)

    write(folder, "0002_broken.sql", "CREATE TABLE half (id text);")
    assert await migrate(conn, [("svc", folder)]) == ["svc/0002_broken"]


async def test_namespaces_are_versioned_separately(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    write(tmp_path / "a", "0001_one.sql", "CREATE TABLE a_one (id text);")
    write(tmp_path / "b", "0001_one.sql", "CREATE TABLE b_one (id text);")
    applied = await migrate(conn, [("a", tmp_path / "a"), ("b", tmp_path / "b")])
    assert applied == ["a/0001_one", "b/0001_one"]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql"])
async def test_a_badly_named_file_is_refused(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path, name: str
) -> None:
    write(tmp_path / "svc", name, "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description"):
        await migrate(conn, [("svc", tmp_path / "svc")])


async def test_two_replicas_starting_together_apply_each_migration_once(
    fresh_database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    # Not idempotent on purpose: applied twice, the second CREATE TABLE would fail.
    write(folder, "0001_slow.sql", "SELECT pg_sleep(0.3); CREATE TABLE once (id text);")
    connections = [await asyncpg.connect(fresh_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, [("svc", folder)]) for c in connections))
    finally:
        for connection in connections:
            await connection.close()
    assert sorted(results) == [[], [], ["svc/0001_slow"]]


NO_TRANSACTION = "-- migration: no-transaction\n"
ACCOUNTS = "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL);"


async def index_valid(conn: asyncpg.Connection[asyncpg.Record], index: str) -> bool | None:
    valid: bool | None = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index
    )
    return valid


async def test_a_no_transaction_migration_builds_its_index_while_writes_go_on(
    fresh_database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    migrating = await asyncpg.connect(fresh_database)
    writer = await asyncpg.connect(fresh_database)
    holder = await asyncpg.connect(fresh_database)
    try:
        await migrate(migrating, [("svc", folder)])
        await writer.execute(
            "INSERT INTO accounts SELECT n, 'a' || n || '@example.com'"
            " FROM generate_series(1, 10000) AS n"
        )
        write(
            folder,
            "0002_accounts_by_email.sql",
            NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email\n"
            "    ON accounts (email);\n",
        )
        # An open write transaction makes the build wait for it: the build is
        # then certainly under way while the next write is tried.
        opened = holder.transaction()
        await opened.start()
        await holder.execute("INSERT INTO accounts VALUES (0, 'early@example.com')")
        building = asyncio.create_task(migrate(migrating, [("svc", folder)]))

        async def build_waits() -> bool:
            waiting: str | None = await writer.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                migrating.get_server_pid(),
            )
            return waiting == "Lock"

        await wait_for(build_waits, timeout=10, message="the index build never waited")
        # A plain CREATE INDEX would hold a SHARE lock and queue this insert behind it.
        await asyncio.wait_for(
            writer.execute("INSERT INTO accounts VALUES (10001, 'during@example.com')"), 5
        )
        await opened.commit()
        assert await asyncio.wait_for(building, 30) == ["svc/0002_accounts_by_email"]
        assert await index_valid(writer, "accounts_by_email") is True
        assert await recorded(writer) == [("svc", 1, "accounts"), ("svc", 2, "accounts_by_email")]
        assert await migrate(migrating, [("svc", folder)]) == []
    finally:
        for connection in (migrating, writer, holder):
            await connection.close()


async def test_replicas_starting_together_run_a_no_transaction_migration_once(
    fresh_database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    # The first migration holds the lock long enough for the others to queue;
    # the concurrent build then runs while they wait (waiting inside the
    # server, they would deadlock with it).
    write(folder, "0001_accounts.sql", "SELECT pg_sleep(0.3); " + ACCOUNTS)
    write(
        folder,
        "0002_accounts_by_email.sql",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email"
        " ON accounts (email);\n",
    )
    connections = [await asyncpg.connect(fresh_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, [("svc", folder)]) for c in connections))
        assert sorted(results) == [[], [], ["svc/0001_accounts", "svc/0002_accounts_by_email"]]
        assert await index_valid(connections[0], "accounts_by_email") is True
    finally:
        for connection in connections:
            await connection.close()


async def test_a_failed_concurrent_build_is_rebuilt_valid_once_the_data_allows(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    await migrate(conn, [("svc", folder)])
    await conn.execute(
        "INSERT INTO accounts VALUES (1, 'same@example.com'), (2, 'same@example.com')"
    )
    write(
        folder,
        "0002_one_account_per_email.sql",
        NO_TRANSACTION
        + "-- Emails are unique from now on.\n"
        + "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_unique\n"
        + "    ON accounts (email);\n",
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrate(conn, [("svc", folder)])
    # What PostgreSQL leaves behind, and what IF NOT EXISTS alone would then skip.
    assert await index_valid(conn, "accounts_email_unique") is False
    assert await recorded(conn) == [("svc", 1, "accounts")]

    await conn.execute("DELETE FROM accounts WHERE id = 2")
    assert await migrate(conn, [("svc", folder)]) == ["svc/0002_one_account_per_email"]
    assert await index_valid(conn, "accounts_email_unique") is True
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("INSERT INTO accounts VALUES (3, 'same@example.com')")


@contextlib.asynccontextmanager
async def built_by_hand_halfway(
    by_hand: asyncpg.Connection[asyncpg.Record],
    holder: asyncpg.Connection[asyncpg.Record],
    build: str,
) -> AsyncIterator[None]:
    """``build`` run by hand, held halfway (its index invalid) for the block; then finished.

    An open write transaction on ``holder`` is what holds the build.
    """
    opened = holder.transaction()
    await opened.start()
    await holder.execute("INSERT INTO accounts VALUES (1, 'early@example.com')")
    building = asyncio.create_task(by_hand.execute(build))
    try:
        await wait_for(
            lambda: holder.fetchval(
                "SELECT true FROM pg_stat_progress_create_index WHERE pid = $1",
                by_hand.get_server_pid(),
            ),
            timeout=10,
            message="the build by hand never started",
        )
        yield
    finally:
        await opened.commit()
        await asyncio.wait_for(building, 30)


async def test_an_index_someone_is_building_by_hand_is_not_dropped_under_them(
    fresh_database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    build = "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email ON accounts (email);\n"
    migrating = await asyncpg.connect(fresh_database)
    by_hand = await asyncpg.connect(fresh_database)
    holder = await asyncpg.connect(fresh_database)
    try:
        await migrate(migrating, [("svc", folder)])
        write(folder, "0002_accounts_by_email.sql", NO_TRANSACTION + build)
        async with built_by_hand_halfway(by_hand, holder, build):
            with pytest.raises(MigrationError, match="being built by another session"):
                await migrate(migrating, [("svc", folder)])
        assert await migrate(migrating, [("svc", folder)]) == ["svc/0002_accounts_by_email"]
        assert await index_valid(migrating, "accounts_by_email") is True
    finally:
        for connection in (migrating, by_hand, holder):
            await connection.close()


async def test_an_index_name_taken_by_another_relation_fails_loudly(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS + " CREATE TABLE accounts_by_email (id text);")
    write(
        folder,
        "0002_accounts_by_email.sql",
        NO_TRANSACTION + "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email"
        " ON accounts (email);\n",
    )
    with pytest.raises(MigrationError, match="no index accounts_by_email after its build"):
        await migrate(conn, [("svc", folder)])
    assert await recorded(conn) == [("svc", 1, "accounts")]


@pytest.mark.parametrize(
    "first_line",
    [
        "-- migration: no-transation",
        "-- migrations: no-transaction",
        "--no-transaction",
        "-- Accounts are found by email.",
    ],
)
async def test_concurrently_without_the_exact_directive_is_refused_before_anything_runs(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path, first_line: str
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    write(
        folder,
        "0002_accounts_by_email.sql",
        first_line + "\nCREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email"
        " ON accounts (email);\n",
    )
    with pytest.raises(MigrationError, match=re.escape("0002_accounts_by_email.sql")):
        await migrate(conn, [("svc", folder)])
    assert "accounts" not in await tables(conn)


async def test_an_applied_no_transaction_migration_is_checked_like_any_other(
    conn: asyncpg.Connection[asyncpg.Record], tmp_path: Path
) -> None:
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    build = "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email ON accounts (email);\n"
    write(folder, "0003_accounts_by_email.sql", NO_TRANSACTION + build)
    await migrate(conn, [("svc", folder)])

    write(folder, "0002_late.sql", NO_TRANSACTION + build.replace("email)", "email, id)"))
    with pytest.raises(MigrationError, match="older than applied version 3"):
        await migrate(conn, [("svc", folder)])
    (folder / "0002_late.sql").unlink()

    write(folder, "0003_accounts_by_email.sql", NO_TRANSACTION + build.replace("email)", "id)"))
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(conn, [("svc", folder)])


async def test_a_build_by_hand_as_another_role_is_not_dropped_under_it(
    fresh_database: str, tmp_path: Path
) -> None:
    """The services migrate as their database's owner (deploy/k8s: the app role), not a
    superuser; an operator builds by hand as whoever they are (docs/migrations.md, step 3).

    PostgreSQL shows another role's ``pg_stat_progress_create_index`` row with its
    ``index_relid`` NULL unless the viewer has ``pg_read_all_stats``: the runner must
    still not take the half-built index for one a failed build left.
    """
    role = unique_name("migrator")
    folder = tmp_path / "svc"
    write(folder, "0001_accounts.sql", ACCOUNTS)
    build = "CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_by_email ON accounts (email);\n"
    admin = await asyncpg.connect(fresh_database)
    database = await admin.fetchval("SELECT current_database()")
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    await admin.execute(f"ALTER DATABASE {database} OWNER TO {role}")
    migrating = await asyncpg.connect(fresh_database, user=role)
    holder = await asyncpg.connect(fresh_database)
    try:
        await migrate(migrating, [("svc", folder)])
        write(folder, "0002_accounts_by_email.sql", NO_TRANSACTION + build)
        async with built_by_hand_halfway(admin, holder, build):
            # Either answer is right; waiting on the half-built index to drop it is not.
            async with asyncio.timeout(10):
                with pytest.raises(MigrationError, match="being built by another session"):
                    await migrate(migrating, [("svc", folder)])
    finally:
        await migrating.close()
        await holder.close()
        await admin.execute(f"ALTER DATABASE {database} OWNER TO CURRENT_USER")
        await admin.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
        await admin.close()
        async with asyncio.timeout(10):
            other = await asyncpg.connect(fresh_database)
            try:
                await other.execute(f"DROP ROLE {role}")
            finally:
                await other.close()
