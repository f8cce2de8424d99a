"""What a query's plan did: the store's own SQL, recorded, then explained as PostgreSQL runs it.

asyncpg prepares every statement, and after five executions PostgreSQL may
settle on a generic plan that knows no parameter values; ``plans_as_prepared``
explains seven executions of a prepared statement and one with the generic
plan forced, so a test sees every plan the statement may run with.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, cast

import asyncpg
import msgspec

from shared.db import Connection


class Recording:
    """Passes ``fetch`` and ``execute`` through to a real connection and keeps what was asked."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self.conn = conn
        self.asked: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.asked.append((sql, args))
        return await self.conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        self.asked.append((sql, args))
        return await self.conn.execute(sql, *args)


async def recorded_query(
    conn: asyncpg.Connection[asyncpg.Record], run: Callable[[Connection], Awaitable[Any]]
) -> tuple[Any, str, tuple[Any, ...]]:
    """What ``run`` returned, and the one statement it sent."""
    recording = Recording(conn)
    found = await run(cast(Connection, recording))
    [(sql, args)] = recording.asked[:1]
    return found, sql, args


def rows_touched(plan: dict[str, Any], relation: str) -> int:
    own = 0
    if plan.get("Relation Name") == relation:
        loops = plan.get("Actual Loops", 1)
        own = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * loops
    return own + sum(rows_touched(child, relation) for child in plan.get("Plans", []))


def indexes_used(plan: dict[str, Any]) -> set[str]:
    own = {plan["Index Name"]} if "Index Name" in plan else set()
    return own.union(*(indexes_used(child) for child in plan.get("Plans", [])))


def _literal(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    return "'" + str(value).replace("'", "''") + "'"


async def plans_as_prepared(
    conn: asyncpg.Connection[asyncpg.Record], sql: str, args: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """The plans of seven executions of ``sql`` prepared, then of one with a generic plan.

    Each execution is rolled back, so a statement that writes sees the same rows each time.
    """
    await conn.execute(f"PREPARE explained AS {sql}")
    # EXECUTE takes values, not bind parameters (and no parentheses when there are none).
    values = f"({', '.join(map(_literal, args))})" if args else ""
    call = f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE explained{values}"
    plans = []
    try:
        for generic in [False] * 7 + [True]:
            transaction = conn.transaction()
            await transaction.start()
            try:
                if generic:
                    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                plans.append(msgspec.json.decode(await conn.fetchval(call))[0]["Plan"])
            finally:
                await transaction.rollback()
    finally:
        await conn.execute("DEALLOCATE explained")
    return plans
