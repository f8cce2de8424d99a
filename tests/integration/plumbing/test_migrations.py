"""Versioned migrations: applied once, recorded, never re-run or skipped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.migrations import PLUMBING_MIGRATIONS, MigrationError, discover, migrate


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
