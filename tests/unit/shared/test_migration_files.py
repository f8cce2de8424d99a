"""How a migration file is read: in a transaction, or as statements run one by one outside one."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.catalog.__main__ import MIGRATIONS as CATALOG
from services.orders.__main__ import MIGRATIONS as ORDERS
from services.settlement.__main__ import MIGRATIONS as SETTLEMENT
from shared.account_generations import MIGRATIONS as ACCOUNT_GENERATIONS
from shared.migrations import (
    NO_TRANSACTION,
    PLUMBING_MIGRATIONS,
    MigrationError,
    Statement,
    discover,
    statements_outside_transaction,
)

FILE = Path("svc/0007_accounts_by_email.sql")


def read(sql: str) -> tuple[Statement, ...]:
    return statements_outside_transaction(FILE, sql)


def test_a_file_without_the_directive_runs_in_a_transaction() -> None:
    assert read("CREATE INDEX accounts_by_email ON accounts (email);") == ()


def test_statements_end_with_a_semicolon_at_a_line_end_and_comment_lines_are_left_out() -> None:
    statements = read(
        f"{NO_TRANSACTION}\n"
        "-- Accounts are found by email; the old index goes.\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_unique\n"
        "    ON accounts (lower(email)) WHERE email <> ';';\n"
        "\n"
        "DROP INDEX CONCURRENTLY IF EXISTS accounts_by_email;\n"
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Accounts by name" ON accounts (name);'
    )
    assert statements == (
        Statement(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS accounts_email_unique\n"
            "    ON accounts (lower(email)) WHERE email <> ';';",
            builds_index="accounts_email_unique",
        ),
        Statement("DROP INDEX CONCURRENTLY IF EXISTS accounts_by_email;", builds_index=None),
        Statement(
            'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Accounts by name" ON accounts (name);',
            builds_index='"Accounts by name"',
        ),
    )


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        # Not repeatable after a failure midway: the re-run would stop here.
        ("CREATE INDEX CONCURRENTLY accounts_by_email ON accounts (email);", "may only hold"),
        ("DROP INDEX CONCURRENTLY accounts_by_email;", "may only hold"),
        # Not what the directive is for: this belongs in a transaction.
        ("UPDATE accounts SET email = lower(email);", "may only hold"),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON accounts (email)", "does not end"),
        ("-- Nothing yet.\n", "holds no statement"),
    ],
)
def test_a_no_transaction_file_holds_only_statements_safe_to_repeat(sql: str, refusal: str) -> None:
    with pytest.raises(MigrationError, match=refusal) as refused:
        read(f"{NO_TRANSACTION}\n{sql}")
    assert str(FILE) in str(refused.value)


@pytest.mark.parametrize(
    "first_line",
    ["-- migration: no-transation", "-- Migration: no-transaction", "--no_transaction"],
)
def test_a_misspelt_directive_is_refused_even_without_concurrently(first_line: str) -> None:
    with pytest.raises(MigrationError, match="not a directive this runner knows"):
        read(f"{first_line}\nDROP INDEX accounts_by_email;\n")


def test_a_first_line_that_only_mentions_migrations_is_an_ordinary_comment() -> None:
    assert read("-- Migration notes: look-ups by email.\nCREATE INDEX a ON b (c);") == ()


def test_concurrently_in_a_comment_does_not_need_the_directive() -> None:
    assert read("-- Built without CONCURRENTLY: the table is new.\nCREATE INDEX a ON b (c);") == ()


@pytest.mark.parametrize(
    ("namespace", "folder"),
    [
        ("plumbing", PLUMBING_MIGRATIONS),
        ACCOUNT_GENERATIONS,
        ("catalog", CATALOG),
        ("orders", ORDERS),
        ("settlement", SETTLEMENT),
    ],
)
def test_every_migration_written_before_the_directive_still_runs_in_a_transaction(
    namespace: str, folder: Path
) -> None:
    assert [m.label for m in discover(namespace, folder) if m.statements_outside_transaction] == []
