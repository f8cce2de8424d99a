"""Versioned SQL migrations, recorded in the database they change.

A service applies two sources in order: the shared plumbing tables
(``shared/sql``) and its own ``migrations/`` folder.  Files are named
``NNNN_description.sql``; each runs in its own transaction together with the
row that records it, under an advisory lock so two starting replicas never
race.  An applied migration whose file has changed, or a new file numbered
below one already applied, stops start-up: an upgrade never re-runs or skips.

A file whose first line is ``-- migration: no-transaction`` runs outside a
transaction instead, so it can build an index without blocking writes to the
table (PostgreSQL refuses ``CREATE INDEX CONCURRENTLY`` in a transaction).
Such a file is a list of statements, each ending with a semicolon at the end
of a line, and each one of the few kinds that are safe to repeat after a
failure midway: ``CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON ...``
and ``DROP INDEX CONCURRENTLY IF EXISTS name``.  A failed concurrent build
leaves an invalid index behind that ``IF NOT EXISTS`` would then skip, so the
runner drops an invalid index of the name before building it and checks that
it is valid afterwards; the file is recorded only once every statement
succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.db import Connection

PLUMBING_MIGRATIONS = Path(__file__).parent / "sql"
NO_TRANSACTION = "-- migration: no-transaction"

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6D69677261  # "migra"
_LOCK_POLL_SECONDS = 0.2
# How long dropping a failed build's index may wait for the table's lock (see
# _drop_failed_build): past it, some session is building that index.
_DROP_LOCK_TIMEOUT_MS = 5_000
# A first line meant as a directive but not spelled as one (``-- migrations:
# no-transaction``, ``--migration notransaction``, ``-- no-transaction``).
_LOOKS_LIKE_DIRECTIVE = re.compile(r"^--\s*(migrations?\s*:|no[-_ ]?transaction)", re.IGNORECASE)
_CONCURRENTLY = re.compile(r"\bconcurrently\b", re.IGNORECASE)
_COMMENT = re.compile(r"--[^\n]*")
_NAME = r'("[^"]+"|[a-z_][a-z0-9_$]*)'
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+{_NAME}\s+ON\s",
    re.IGNORECASE,
)
_DROP_INDEX = re.compile(
    rf"^DROP\s+INDEX\s+CONCURRENTLY\s+IF\s+EXISTS\s+{_NAME}\s*;$", re.IGNORECASE
)


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Statement:
    """One statement of a no-transaction migration, and the index it builds if any."""

    sql: str
    builds_index: str | None


@dataclass(frozen=True)
class Migration:
    namespace: str
    version: int
    name: str
    sql: str
    # Empty for a migration that runs as one script in a transaction.
    statements_outside_transaction: tuple[Statement, ...] = ()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.version:04d}_{self.name}"


def discover(namespace: str, directory: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path} is not named NNNN_description.sql")
        sql = path.read_text("utf-8")
        found.append(
            Migration(
                namespace,
                int(match.group(1)),
                match.group(2),
                sql,
                statements_outside_transaction(path, sql),
            )
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


def statements_outside_transaction(path: Path, sql: str) -> tuple[Statement, ...]:
    """The statements of a no-transaction file; empty for one that runs in a transaction.

    Refuses a file that would otherwise fail only once it runs, or worse,
    run in a transaction by mistake: a misspelt directive, CONCURRENTLY
    without the directive, a statement not safe to repeat outside one.
    """
    first_line = sql.split("\n", 1)[0].strip()
    if first_line != NO_TRANSACTION:
        if _LOOKS_LIKE_DIRECTIVE.match(first_line):
            raise MigrationError(
                f"{path}: first line {first_line!r} is not a directive this runner knows;"
                f" the only one is {NO_TRANSACTION!r}"
            )
        if _CONCURRENTLY.search(_COMMENT.sub("", sql)):
            raise MigrationError(
                f"{path} uses CONCURRENTLY, which PostgreSQL refuses inside a transaction;"
                f" make {NO_TRANSACTION!r} its first line"
            )
        return ()
    statements = tuple(_statement(path, text) for text in _split(path, sql))
    if not statements:
        raise MigrationError(f"{path} is marked {NO_TRANSACTION!r} but holds no statement")
    return statements


def _split(path: Path, sql: str) -> list[str]:
    """Statements end with a semicolon that ends a line; lines starting with -- are comments."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip())
            current = []
    if "\n".join(current).strip():
        raise MigrationError(f"{path}: its last statement does not end with ';' at a line's end")
    return [statement for statement in statements if statement != ";"]


def _statement(path: Path, sql: str) -> Statement:
    if created := _CREATE_INDEX.match(sql):
        return Statement(sql, builds_index=created.group(1))
    if _DROP_INDEX.match(sql):
        return Statement(sql, builds_index=None)
    raise MigrationError(
        f"{path}: a no-transaction migration may only hold CREATE [UNIQUE] INDEX CONCURRENTLY"
        " IF NOT EXISTS and DROP INDEX CONCURRENTLY IF EXISTS statements (repeated whole"
        f" after a failure midway), not: {sql.splitlines()[0]}"
    )


async def migrate(conn: Connection, sources: list[tuple[str, Path]]) -> list[str]:
    """Apply what is missing; return the names of the migrations applied now."""
    discovered = [discover(namespace, directory) for namespace, directory in sources]
    applied_now: list[str] = []
    await _lock(conn)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                namespace  text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (namespace, version)
            )
            """
        )
        for (namespace, _), migrations in zip(sources, discovered, strict=True):
            applied_now += await _apply_source(conn, namespace, migrations)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def _lock(conn: Connection) -> None:
    """Take the migration lock, polling rather than waiting inside the server.

    A replica blocked in ``pg_advisory_lock`` is running a statement, so it
    holds a snapshot; ``CREATE INDEX CONCURRENTLY`` in the replica holding the
    lock waits for every older snapshot to end.  The two would deadlock, and
    PostgreSQL would break it by failing one of them.  Between tries a waiting
    replica is idle and holds none.
    """
    waiting = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        if not waiting:
            log.info("waiting for another replica's migrations")
            waiting = True
        await asyncio.sleep(_LOCK_POLL_SECONDS)


async def _apply_source(conn: Connection, namespace: str, migrations: list[Migration]) -> list[str]:
    rows = await conn.fetch(
        "SELECT version, checksum FROM schema_migrations WHERE namespace = $1", namespace
    )
    recorded = {row["version"]: row["checksum"] for row in rows}
    highest = max(recorded, default=0)
    applied_now: list[str] = []
    for migration in migrations:
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(f"{migration.label} was changed after it was applied")
            continue
        if migration.version < highest:
            raise MigrationError(f"{migration.label} is older than applied version {highest}")
        if migration.statements_outside_transaction:
            await _apply_outside_transaction(conn, migration)
            await _record(conn, migration)
        else:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await _record(conn, migration)
        applied_now.append(migration.label)
    return applied_now


async def _apply_outside_transaction(conn: Connection, migration: Migration) -> None:
    # Each statement is sent alone: several in one query run as one implicit
    # transaction, which CONCURRENTLY refuses as well.
    for statement in migration.statements_outside_transaction:
        index = statement.builds_index
        if index is not None and await _index_valid(conn, index) is False:
            await _drop_failed_build(conn, migration, index)
        await conn.execute(statement.sql)
        if index is None:
            continue
        valid = await _index_valid(conn, index)
        if valid is None:
            raise MigrationError(
                f"{migration.label}: no index {index} after its build"
                " (is the name taken by another relation?)"
            )
        if not valid:
            raise MigrationError(f"{migration.label}: index {index} is invalid after its build")


async def _drop_failed_build(conn: Connection, migration: Migration, index: str) -> None:
    """Drop an invalid index that a failed build left; refuse one still being built.

    An index being built right now is invalid too until it is done.  Its
    builder shows in ``pg_stat_progress_create_index``, but with the index
    hidden from a viewer of another role without ``pg_read_all_stats`` (the
    services migrate as their database's owner, an operator builds by hand
    as whoever they are).  So the drop itself is the test: a build holds the
    table's SHARE UPDATE EXCLUSIVE lock until it ends, and a drop that cannot
    have it within ``_DROP_LOCK_TIMEOUT`` is waiting for a live build, which it
    would otherwise throw away once that is done.  Autovacuum, the other
    usual holder of that lock, gives it up to a waiter after
    ``deadlock_timeout`` (1 s by default), well within the timeout; an
    anti-wraparound autovacuum, a manual VACUUM or a long transaction on the
    table does not, and the start-up is refused with the same message until
    it ends.
    """
    builder = await conn.fetchval(
        "SELECT pid FROM pg_stat_progress_create_index WHERE index_relid = to_regclass($1)",
        index,
    )
    being_built = MigrationError(
        f"{migration.label}: index {index} is being built by another session"
        + (f" (pid {builder})" if builder is not None else "")
        + " (or a long transaction holds its table); start again once it is done"
    )
    if builder is not None:
        raise being_built
    log.warning(
        "dropping an invalid index an earlier failed build left",
        extra={"migration": migration.label, "index": index},
    )
    # SET, not SET LOCAL: DROP INDEX CONCURRENTLY runs outside any transaction.
    await conn.execute(f"SET lock_timeout = '{_DROP_LOCK_TIMEOUT_MS}ms'")
    try:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    except asyncpg.LockNotAvailableError:
        raise being_built from None
    finally:
        await conn.execute("RESET lock_timeout")


async def _index_valid(conn: Connection, index: str) -> bool | None:
    """Whether the index is valid; None if there is no index of that name."""
    valid: bool | None = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index
    )
    return valid


async def _record(conn: Connection, migration: Migration) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (namespace, version, name, checksum)"
        " VALUES ($1, $2, $3, $4)",
        migration.namespace,
        migration.version,
        migration.name,
        migration.checksum,
    )
