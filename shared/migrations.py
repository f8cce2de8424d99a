"""Versioned SQL migrations, recorded in the database they change.

A service applies two sources in order: the shared plumbing tables
(``shared/sql``) and its own ``migrations/`` folder.  Files are named
``NNNN_description.sql``; each runs in its own transaction together with the
row that records it, under an advisory lock so two starting replicas never
race.  An applied migration whose file has changed, or a new file numbered
below one already applied, stops start-up: an upgrade never re-runs or skips.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from shared.db import Connection

PLUMBING_MIGRATIONS = Path(__file__).parent / "sql"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x6D69677261  # "migra"


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    namespace: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(namespace: str, directory: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path} is not named NNNN_description.sql")
        found.append(
            Migration(namespace, int(match.group(1)), match.group(2), path.read_text("utf-8"))
        )
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {directory}")
    return found


async def migrate(conn: Connection, sources: list[tuple[str, Path]]) -> list[str]:
    """Apply what is missing; return the names of the migrations applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
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
        for namespace, directory in sources:
            applied_now += await _apply_source(conn, namespace, discover(namespace, directory))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def _apply_source(conn: Connection, namespace: str, migrations: list[Migration]) -> list[str]:
    rows = await conn.fetch(
        "SELECT version, checksum FROM schema_migrations WHERE namespace = $1", namespace
    )
    recorded = {row["version"]: row["checksum"] for row in rows}
    highest = max(recorded, default=0)
    applied_now: list[str] = []
    for migration in migrations:
        label = f"{namespace}/{migration.version:04d}_{migration.name}"
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(f"{label} was changed after it was applied")
            continue
        if migration.version < highest:
            raise MigrationError(f"{label} is older than applied version {highest}")
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (namespace, version, name, checksum)"
                " VALUES ($1, $2, $3, $4)",
                namespace,
                migration.version,
                migration.name,
                migration.checksum,
            )
        applied_now.append(label)
    return applied_now
